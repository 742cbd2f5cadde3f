"""The whole model's config: every part, validated together, and its files (config.json, manifest dict)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcaudio.config import official
from bcaudio.config.architecture import (
    AudioHeadConfig,
    BridgeConfig,
    DetokenizerConfig,
    EncoderConfig,
    FlowConfig,
    FrontendConfig,
    LLMConfig,
    VocoderConfig,
)
from bcaudio.config.base import ConfigError, check, from_plain
from bcaudio.config.generation import GenerationConfig
from bcaudio.config.tokens import SpecialTokens
from bcaudio.documents import read_document


@dataclass
class ModelConfig:
    """The whole Baichuan-Audio model; ``preset`` records where it came from (informational)."""

    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    audio_head: AudioHeadConfig = field(default_factory=AudioHeadConfig)
    detokenizer: DetokenizerConfig = field(default_factory=DetokenizerConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    tokens: SpecialTokens = field(default_factory=SpecialTokens)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    preset: str = "custom"

    @property
    def rvq_dim(self) -> int:
        return self.encoder.d_model * self.bridge.avg_pooler

    @property
    def audio_head_heads(self) -> int:
        return self.llm.hidden_size // self.audio_head.head_dim

    def decoded_frames(self, codes: int) -> int:
        """50 Hz mel frames the detokenizer makes of ``codes`` codes: (T - 1) * stride + kernel, less the
        right trim; 4T - 1 as published. Code t's frames start at frame t * stride."""
        kernel, stride = self.detokenizer.kernel_size, self.bridge.avg_pooler
        return (codes - 1) * stride + kernel - max(0, kernel - stride)

    def validate(self) -> ModelConfig:
        for part in (self.frontend, self.encoder, self.bridge, self.llm, self.audio_head,
                     self.detokenizer, self.flow, self.vocoder, self.generation):
            part.validate()
        self.tokens.validate(self.llm.vocab_size)
        check(self.llm.hidden_size % self.audio_head.head_dim == 0,
               "audio_head: llm hidden_size must be a multiple of audio_head.head_dim")
        check(self.flow.prenet_in_dim == self.encoder.d_model,
               f"flow: prenet_in_dim {self.flow.prenet_in_dim} must equal encoder d_model {self.encoder.d_model}")
        check(self.flow.mel_bins == self.vocoder.num_mels, "flow mel_bins must equal vocoder num_mels")
        return self

    def to_official(self) -> dict[str, Any]:
        """The checkpoint's config.json: official keys, plus a ``bcaudio`` section for the rest."""
        return official.to_official(self)

    @classmethod
    def from_official(cls, raw: dict[str, Any]) -> ModelConfig:
        """Read a config.json in the official format; unknown official keys are ignored, missing ones default."""
        try:
            return official.from_official(raw, cls()).validate()
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"config.json: malformed field ({exc!r}); compare with spec §15") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what a model package's manifest stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, so a corrupt manifest is caught."""
        return from_plain(cls, raw, "config").validate()

    def save(self, path: str | Path) -> None:
        from bcaudio.atomic import write_json

        write_json(path, self.to_official())

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        raw = read_document(path, ConfigError,
                            "re-copy the checkpoint, or point --checkpoint at one (`bcaudio init` makes one)",
                            missing="no config.json")
        return cls.from_official(raw)
