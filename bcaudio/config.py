"""Model configuration: one dataclass per part, the presets, and the official config.json format.

This module is torch-free on purpose: the runtime reads the same config from a
model package's manifest, and an edge box has no torch.

Defaults are the published Baichuan-Audio (7B) shapes, so a real checkpoint's
``config.json`` that omits a field still gets the right value. Fields that the
official format has no key for (the HiFT vocoder, the flow U-Net's block counts
for reduced presets, the log-mel band edges) travel in an extra ``"bcaudio"``
section; a real checkpoint has none and keeps the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config that cannot describe a buildable model; the message names the field and the fix."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class FrontendConfig:
    """Whisper-style log-mel (spec §1)."""

    sampling_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    num_mel_bins: int = 128
    fmin: float = 0.0
    fmax: float = 8000.0
    max_audio_seconds: int = 30

    @property
    def chunk_samples(self) -> int:
        return self.sampling_rate * self.max_audio_seconds

    @property
    def max_frames(self) -> int:
        return self.chunk_samples // self.hop_length

    def validate(self) -> None:
        _check(self.hop_length > 0 and self.n_fft >= self.hop_length, "frontend: need n_fft >= hop_length > 0")
        _check(0 <= self.fmin < self.fmax <= self.sampling_rate / 2, "frontend: need 0 <= fmin < fmax <= sr/2")


@dataclass
class EncoderConfig:
    """Whisper-style audio encoder (spec §2)."""

    d_model: int = 1280
    layers: int = 32
    heads: int = 20
    ffn_dim: int = 5120
    kernel_size: int = 3
    stride: int = 2
    max_source_positions: int = 1500

    def validate(self) -> None:
        _check(self.d_model % self.heads == 0, f"encoder: d_model {self.d_model} not divisible by heads {self.heads}")
        _check(self.layers >= 1, "encoder: layers must be >= 1")


@dataclass
class BridgeConfig:
    """12.5 Hz downsampling and the residual vector quantizer (spec §3, §4)."""

    avg_pooler: int = 4
    codebook_sizes: list[int] = field(default_factory=lambda: [8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024])

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    def validate(self) -> None:
        _check(self.avg_pooler >= 1, "bridge: avg_pooler must be >= 1")
        _check(len(self.codebook_sizes) >= 1 and min(self.codebook_sizes) >= 2, "bridge: codebook sizes must be >= 2")


@dataclass
class LLMConfig:
    """Qwen2-style decoder (spec §5)."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    layers: int = 28
    heads: int = 28
    kv_heads: int = 4
    head_dim: int = 128
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 8192

    def validate(self) -> None:
        _check(self.heads % self.kv_heads == 0, f"llm: heads {self.heads} not a multiple of kv_heads {self.kv_heads}")
        _check(self.head_dim % 2 == 0, "llm: head_dim must be even for rotary embeddings")
        _check(self.layers >= 1, "llm: layers must be >= 1")


@dataclass
class AudioHeadConfig:
    """Depth transformer writing the codebooks of one frame (spec §7). Width is the LLM's."""

    layers: int = 3
    head_dim: int = 128
    rms_norm_eps: float = 1e-6

    def validate(self) -> None:
        _check(self.layers >= 1 and self.head_dim >= 1, "audio_head: layers and head_dim must be >= 1")


@dataclass
class DetokenizerConfig:
    """Codes -> 50 Hz states (spec §9). Width is the encoder's d_model."""

    layers: int = 8
    heads: int = 20
    ffn_dim: int = 5120
    kernel_size: int = 3
    max_positions: int = 3000

    def validate(self) -> None:
        _check(self.layers >= 1, "detokenizer: layers must be >= 1")


@dataclass
class FlowConfig:
    """Flow-matching decoder: pre-net, causal U-Net estimator, Euler/CFG solver (spec §10)."""

    prenet_in_dim: int = 1280
    prenet_hidden_dim: int = 2048
    prenet_d_model: int = 512
    prenet_heads: int = 8
    prenet_ffn_dim: int = 2048
    prenet_layers: int = 12
    mel_bins: int = 80
    channels: list[int] = field(default_factory=lambda: [256])
    attention_head_dim: int = 64
    num_heads: int = 8
    n_blocks: int = 4
    num_mid_blocks: int = 12
    static_chunk_size: int = 100
    diffusion_steps: int = 10
    cfg_rate: float = 0.7
    rms_norm_eps: float = 1e-6

    @property
    def time_embed_dim(self) -> int:
        return self.channels[0] * 4

    def validate(self) -> None:
        _check(self.prenet_d_model % self.prenet_heads == 0, "flow: prenet_d_model not divisible by prenet_heads")
        _check(len(self.channels) == 1, "flow: only a single U-Net level (channels=[C]) is supported, as published")
        _check(self.diffusion_steps >= 1, "flow: diffusion_steps must be >= 1")


@dataclass
class VocoderConfig:
    """HiFT vocoder (spec §11); not part of the official config.json."""

    sampling_rate: int = 24000
    num_mels: int = 80
    base_channels: int = 512
    upsample_rates: list[int] = field(default_factory=lambda: [8, 5, 3])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 11, 7])
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilations: list[list[int]] = field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    source_resblock_kernel_sizes: list[int] = field(default_factory=lambda: [7, 7, 11])
    source_resblock_dilations: list[list[int]] = field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    istft_n_fft: int = 16
    istft_hop: int = 4
    nb_harmonics: int = 8
    sine_amp: float = 0.1
    noise_std: float = 0.003
    voiced_threshold: float = 10.0
    f0_channels: int = 512
    f0_layers: int = 5
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.upsample_rates) * self.istft_hop

    def validate(self) -> None:
        n = len(self.upsample_rates)
        _check(len(self.upsample_kernel_sizes) == n, "vocoder: upsample rates and kernel sizes differ in length")
        _check(len(self.source_resblock_kernel_sizes) == n, "vocoder: need one source resblock per upsample")
        _check(self.base_channels % (2**n) == 0, "vocoder: base_channels must halve cleanly per upsample")


@dataclass
class SpecialTokens:
    """Token ids of spec §6. The optional ones are read when a checkpoint declares them."""

    eos: int = 151643
    system: int = 151665
    user: int = 151667
    assistant: int = 151668
    audio_start: int = 151676
    audio_end: int = 151677
    audio_pad: int = 151678
    audiotext_start: int = 151697
    audiogen_start: int = 151700
    audiogen_end: int = 151701
    audio_delim: int | None = None
    audiotext_end: int | None = None
    audiotext_pad: int | None = None

    NAMES = {
        "eos": "<|endoftext|>",
        "system": "<B_SYS>",
        "user": "<C_Q>",
        "assistant": "<C_A>",
        "audio_start": "<audio_start_baichuan>",
        "audio_end": "<audio_end_baichuan>",
        "audio_pad": "<audio_pad_baichuan>",
        "audiotext_start": "<audiotext_start_baichuan>",
        "audiogen_start": "<audiogen_start_baichuan>",
        "audiogen_end": "<audiogen_end_baichuan>",
        "audio_delim": "<audio_delim_baichuan>",
        "audiotext_end": "<audiotext_end_baichuan>",
        "audiotext_pad": "<audiotext_pad_baichuan>",
    }

    def by_id(self) -> dict[int, str]:
        """Id -> token text for every declared special token."""
        return {getattr(self, k): v for k, v in self.NAMES.items() if getattr(self, k) is not None}

    def validate(self, vocab_size: int) -> None:
        ids = [getattr(self, k) for k in self.NAMES if getattr(self, k) is not None]
        _check(len(set(ids)) == len(ids), "special_tokens: two special tokens share an id")
        _check(max(ids) < vocab_size, f"special_tokens: id {max(ids)} >= vocab_size {vocab_size}")


@dataclass
class SamplingParams:
    """One phase's sampling settings; temperature 0 means greedy."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 50

    def validate(self, where: str) -> None:
        _check(self.temperature >= 0, f"{where}: temperature must be >= 0")
        _check(0 < self.top_p <= 1, f"{where}: top_p must be in (0, 1]")
        _check(self.top_k >= 0 and self.repetition_penalty > 0, f"{where}: top_k >= 0 and repetition_penalty > 0")
        _check(self.max_new_tokens >= 1, f"{where}: max_new_tokens must be >= 1")


def _greedy(rp: float, n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, repetition_penalty=rp, max_new_tokens=n)


@dataclass
class StreamSettings:
    """Decoding a segment in windows while its frames are still generated (``runtime/generation/segment_stream.py``).

    The reference decodes whole segments (spec §12), so the first audio waits for a segment's last
    frame; a window of ``chunk_frames`` new codes with ``left_context_frames`` codes before it is
    decoded as soon as its frames exist, and its last ``holdback_samples`` wait for the next window
    (the vocoder looks ahead). 0 ``chunk_frames`` decodes whole segments, as the reference does.
    ``first_chunk_frames`` (0: ``chunk_frames``) sizes a segment's first window on its own: small for
    an early first sound, while the later, larger windows decode fewer codes twice.
    """

    chunk_frames: int = 0
    first_chunk_frames: int = 0
    left_context_frames: int = 6  # 480 ms: at least the vocoder's look-back, holdback and crossfade
    holdback_samples: int = 4800  # 200 ms: HiFT's look-ahead (f0 predictor, conv_pre, resblocks), measured

    def validate(self) -> None:
        _check(min(self.chunk_frames, self.first_chunk_frames, self.holdback_samples) >= 0
               and self.left_context_frames >= 1, "generation.stream: chunk_frames, first_chunk_frames and "
               "holdback_samples must be >= 0, left_context_frames >= 1")


@dataclass
class GenerationConfig:
    """The demo loop's per-phase defaults and stop rules (spec §8, §12)."""

    first_text: SamplingParams = field(default_factory=lambda: SamplingParams(0.8, 20, 0.85, 1.1, 50))
    text: SamplingParams = field(default_factory=lambda: SamplingParams(0.3, 20, 0.85, 1.05, 50))
    audio: SamplingParams = field(default_factory=lambda: SamplingParams(0.5, 5, 0.85, 1.3, 500))
    text_only: SamplingParams = field(default_factory=lambda: SamplingParams(0.8, 20, 0.85, 1.1, 1024))
    asr: SamplingParams = field(default_factory=lambda: _greedy(1.3, 448))
    max_rounds: int = 100
    clause_marks: list[str] = field(default_factory=lambda: [",", "!", "?", "，", "。", "！", "？", ". "])
    tts_min_piece_chars: int = 10
    asr_prompt: str = "将语音转录为文本:"
    system_prompt: str = "You are a helpful voice assistant."
    crossfade_samples: int = 240
    stream: StreamSettings = field(default_factory=StreamSettings)

    PHASES = ("first_text", "text", "audio", "text_only", "asr")

    def greedy(self) -> GenerationConfig:
        """A copy with temperature 0 in every phase (penalties and limits kept): for parity runs."""
        out = from_plain(GenerationConfig, dataclasses.asdict(self), "generation")
        for name in self.PHASES:
            getattr(out, name).temperature = 0.0
        return out

    def validate(self) -> None:
        for name in self.PHASES:
            getattr(self, name).validate(f"generation.{name}")
        _check(self.max_rounds >= 1, "generation: max_rounds must be >= 1")
        self.stream.validate()


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
        _check(self.llm.hidden_size % self.audio_head.head_dim == 0,
               "audio_head: llm hidden_size must be a multiple of audio_head.head_dim")
        _check(self.flow.prenet_in_dim == self.encoder.d_model,
               f"flow: prenet_in_dim {self.flow.prenet_in_dim} must equal encoder d_model {self.encoder.d_model}")
        _check(self.flow.mel_bins == self.vocoder.num_mels, "flow mel_bins must equal vocoder num_mels")
        return self

    # ----- the official config.json format (spec §15) -----

    def to_official(self) -> dict[str, Any]:
        """The checkpoint's config.json: official keys, plus a ``bcaudio`` section for the rest."""
        e, b, llm, d, f = self.encoder, self.bridge, self.llm, self.detokenizer, self.flow
        tok = self.tokens
        audio_config: dict[str, Any] = {
            "sampling_rate": self.frontend.sampling_rate,
            "n_fft": self.frontend.n_fft,
            "hop_length": self.frontend.hop_length,
            "num_mel_bins": self.frontend.num_mel_bins,
            "max_audio_seconds": self.frontend.max_audio_seconds,
            "split_overlap": 0.0,
            "d_model": e.d_model,
            "encoder_layers": e.layers,
            "encoder_attention_heads": e.heads,
            "encoder_ffn_dim": e.ffn_dim,
            "kernel_size": e.kernel_size,
            "stride_size": e.stride,
            "max_source_positions": e.max_source_positions,
            "activation_function": "gelu",
            "avg_pooler": b.avg_pooler,
            "vq_config": {"enable": True, "codebook_sizes": list(b.codebook_sizes)},
            "decoder_layers": d.layers,
            "decoder_attention_heads": d.heads,
            "decoder_ffn_dim": d.ffn_dim,
            "decoder_kernel_size": d.kernel_size,
            "audio_head_transformer_layers": self.audio_head.layers,
        }
        for key, name in _OFFICIAL_TOKEN_KEYS.items():
            if getattr(tok, name) is not None:
                audio_config[key] = getattr(tok, name)
        return {
            "architectures": ["OmniForCausalLM"],
            "model_type": "omni",
            "vocab_size": llm.vocab_size,
            "hidden_size": llm.hidden_size,
            "intermediate_size": llm.intermediate_size,
            "num_hidden_layers": llm.layers,
            "num_attention_heads": llm.heads,
            "num_key_value_heads": llm.kv_heads,
            "head_dim": llm.head_dim,
            "attention_qkv_pack": True,
            "attention_qkv_bias": True,
            "use_norm_head": False,
            "hidden_act": "silu",
            "max_position_embeddings": llm.max_position_embeddings,
            "position_embedding_type": "rope",
            "rope_theta": llm.rope_theta,
            "rms_norm_eps": llm.rms_norm_eps,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "audio_config": audio_config,
            "visual_config": {"enable": False},
            "video_config": {"enable": False},
            "flow_matching_config": {
                "use_hidden_states_before_dconv2": True,
                "prenet_in_dim": f.prenet_in_dim,
                "prenet_out_dim": f.mel_bins,
                "prenet_d_model": f.prenet_d_model,
                "prenet_attention_heads": f.prenet_heads,
                "prenet_ffn_dim": f.prenet_ffn_dim,
                "prenet_nlayers": f.prenet_layers,
                "prenet_activation_function": "gelu",
                "prenet_max_source_positions": 5000,
                "in_channels": f.mel_bins,
                "spk_emb_dim": 0,
                "channels": list(f.channels),
                "attention_head_dim": f.attention_head_dim,
                "num_heads": f.num_heads,
                "n_blocks": f.n_blocks,
                "num_mid_blocks": f.num_mid_blocks,
                "act_fn": "gelu",
                "diffusion_steps": f.diffusion_steps,
                "cfm_params": {"t_scheduler": "cosine", "inference_cfg_rate": f.cfg_rate,
                               "solver": "euler", "sigma_min": 1e-6},
            },
            "bcaudio": {
                "preset": self.preset,
                "frontend": {"fmin": self.frontend.fmin, "fmax": self.frontend.fmax},
                "eos_token_id": tok.eos,
                "special_tokens": {k: getattr(tok, k) for k in ("system", "user", "assistant")},
                "audio_head": {"head_dim": self.audio_head.head_dim},
                "detokenizer": {"max_positions": d.max_positions},
                "flow": {"prenet_hidden_dim": f.prenet_hidden_dim, "static_chunk_size": f.static_chunk_size},
                "vocoder": dataclasses.asdict(self.vocoder),
            },
        }

    @classmethod
    def from_official(cls, raw: dict[str, Any]) -> ModelConfig:
        """Read a config.json in the official format; unknown official keys are ignored, missing ones default."""
        try:
            return _from_official(raw).validate()
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
        Path(path).write_text(json.dumps(self.to_official(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no config.json; point --checkpoint at a checkpoint folder") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_official(raw)


_OFFICIAL_TOKEN_KEYS = {
    "audio_start_token_id": "audio_start",
    "audio_end_token_id": "audio_end",
    "audio_pad_token_id": "audio_pad",
    "audio_delim_token_id": "audio_delim",
    "audiotext_start_token_id": "audiotext_start",
    "audiotext_end_token_id": "audiotext_end",
    "audiotext_pad_token_id": "audiotext_pad",
    "audiogen_start_token_id": "audiogen_start",
    "audiogen_end_token_id": "audiogen_end",
}


def from_plain(kind: type, raw: Any, where: str) -> Any:
    """Build a (nested) dataclass from a dict, refusing unknown keys."""
    if not dataclasses.is_dataclass(kind):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = {name: _field_type(kind, name) for name in raw}
    return kind(**{k: from_plain(hints[k], v, f"{where}.{k}") for k, v in raw.items()})


def _field_type(kind: type, name: str) -> Any:
    default = next(f for f in dataclasses.fields(kind) if f.name == name)
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = default.default_factory()  # type: ignore[misc]
        return type(value) if dataclasses.is_dataclass(value) else None
    return None


def _from_official(raw: dict[str, Any]) -> ModelConfig:
    ac = raw.get("audio_config", {})
    fc = raw.get("flow_matching_config", {})
    extra = raw.get("bcaudio", {})
    cfg = ModelConfig(preset=extra.get("preset", "custom"))
    fe = cfg.frontend
    for key in ("sampling_rate", "n_fft", "hop_length", "num_mel_bins", "max_audio_seconds"):
        setattr(fe, key, ac.get(key, getattr(fe, key)))
    fe.fmin = extra.get("frontend", {}).get("fmin", fe.fmin)
    fe.fmax = extra.get("frontend", {}).get("fmax", fe.fmax)
    e = cfg.encoder
    e.d_model = ac.get("d_model", e.d_model)
    e.layers = ac.get("encoder_layers", e.layers)
    e.heads = ac.get("encoder_attention_heads", e.heads)
    e.ffn_dim = ac.get("encoder_ffn_dim", e.ffn_dim)
    e.kernel_size = ac.get("kernel_size", e.kernel_size)
    e.stride = ac.get("stride_size", e.stride)
    e.max_source_positions = ac.get("max_source_positions", e.max_source_positions)
    cfg.bridge.avg_pooler = ac.get("avg_pooler", cfg.bridge.avg_pooler)
    cfg.bridge.codebook_sizes = list(ac.get("vq_config", {}).get("codebook_sizes", cfg.bridge.codebook_sizes))
    llm = cfg.llm
    llm.vocab_size = raw.get("vocab_size", llm.vocab_size)
    llm.hidden_size = raw.get("hidden_size", llm.hidden_size)
    llm.intermediate_size = raw.get("intermediate_size", llm.intermediate_size)
    llm.layers = raw.get("num_hidden_layers", llm.layers)
    llm.heads = raw.get("num_attention_heads", llm.heads)
    llm.kv_heads = raw.get("num_key_value_heads", llm.kv_heads)
    llm.head_dim = raw.get("head_dim", llm.hidden_size // llm.heads)
    llm.rope_theta = float(raw.get("rope_theta", llm.rope_theta))
    llm.rms_norm_eps = float(raw.get("rms_norm_eps", llm.rms_norm_eps))
    llm.max_position_embeddings = raw.get("max_position_embeddings", llm.max_position_embeddings)
    _check(raw.get("attention_qkv_pack", True), "config.json: only the fused W_pack attention layout is supported")
    cfg.audio_head.layers = ac.get("audio_head_transformer_layers", cfg.audio_head.layers)
    cfg.audio_head.head_dim = extra.get("audio_head", {}).get("head_dim", cfg.audio_head.head_dim)
    d = cfg.detokenizer
    d.layers = ac.get("decoder_layers", d.layers)
    d.heads = ac.get("decoder_attention_heads", d.heads)
    d.ffn_dim = ac.get("decoder_ffn_dim", d.ffn_dim)
    d.kernel_size = ac.get("decoder_kernel_size", d.kernel_size)
    d.max_positions = extra.get("detokenizer", {}).get("max_positions", d.max_positions)
    f = cfg.flow
    f.prenet_in_dim = fc.get("prenet_in_dim", f.prenet_in_dim)
    f.mel_bins = fc.get("prenet_out_dim", f.mel_bins)
    f.prenet_d_model = fc.get("prenet_d_model", f.prenet_d_model)
    f.prenet_heads = fc.get("prenet_attention_heads", f.prenet_heads)
    f.prenet_ffn_dim = fc.get("prenet_ffn_dim", f.prenet_ffn_dim)
    f.prenet_layers = fc.get("prenet_nlayers", f.prenet_layers)
    f.channels = list(fc.get("channels", f.channels))
    f.attention_head_dim = fc.get("attention_head_dim", f.attention_head_dim)
    f.num_heads = fc.get("num_heads", f.num_heads)
    f.n_blocks = fc.get("n_blocks", f.n_blocks)
    f.num_mid_blocks = fc.get("num_mid_blocks", f.num_mid_blocks)
    f.diffusion_steps = fc.get("diffusion_steps", f.diffusion_steps)
    f.cfg_rate = float(fc.get("cfm_params", {}).get("inference_cfg_rate", f.cfg_rate))
    f.prenet_hidden_dim = extra.get("flow", {}).get("prenet_hidden_dim", f.prenet_hidden_dim)
    f.static_chunk_size = extra.get("flow", {}).get("static_chunk_size", f.static_chunk_size)
    if "vocoder" in extra:
        cfg.vocoder = from_plain(VocoderConfig, extra["vocoder"], "bcaudio.vocoder")
    tok = cfg.tokens
    for key, name in _OFFICIAL_TOKEN_KEYS.items():
        if key in ac:
            setattr(tok, name, ac[key])
    tok.eos = extra.get("eos_token_id", tok.eos)
    for name, value in extra.get("special_tokens", {}).items():
        setattr(tok, name, value)
    return cfg
