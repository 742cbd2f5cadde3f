"""The shapes of the five parts (spec §1-11), one dataclass per part.

Defaults are the published Baichuan-Audio (7B) shapes, so a real checkpoint's ``config.json`` that omits a
field still gets the right value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bcaudio.config.base import check


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
        check(self.hop_length > 0 and self.n_fft >= self.hop_length, "frontend: need n_fft >= hop_length > 0")
        check(0 <= self.fmin < self.fmax <= self.sampling_rate / 2, "frontend: need 0 <= fmin < fmax <= sr/2")


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
        check(self.d_model % self.heads == 0, f"encoder: d_model {self.d_model} not divisible by heads {self.heads}")
        check(self.layers >= 1, "encoder: layers must be >= 1")


@dataclass
class BridgeConfig:
    """12.5 Hz downsampling and the residual vector quantizer (spec §3, §4)."""

    avg_pooler: int = 4
    codebook_sizes: list[int] = field(default_factory=lambda: [8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024])

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    def validate(self) -> None:
        check(self.avg_pooler >= 1, "bridge: avg_pooler must be >= 1")
        check(len(self.codebook_sizes) >= 1 and min(self.codebook_sizes) >= 2, "bridge: codebook sizes must be >= 2")


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
        check(self.heads % self.kv_heads == 0, f"llm: heads {self.heads} not a multiple of kv_heads {self.kv_heads}")
        check(self.head_dim % 2 == 0, "llm: head_dim must be even for rotary embeddings")
        check(self.layers >= 1, "llm: layers must be >= 1")


@dataclass
class AudioHeadConfig:
    """Depth transformer writing the codebooks of one frame (spec §7). Width is the LLM's."""

    layers: int = 3
    head_dim: int = 128
    rms_norm_eps: float = 1e-6

    def validate(self) -> None:
        check(self.layers >= 1 and self.head_dim >= 1, "audio_head: layers and head_dim must be >= 1")


@dataclass
class DetokenizerConfig:
    """Codes -> 50 Hz states (spec §9). Width is the encoder's d_model."""

    layers: int = 8
    heads: int = 20
    ffn_dim: int = 5120
    kernel_size: int = 3
    max_positions: int = 3000

    def validate(self) -> None:
        check(self.layers >= 1, "detokenizer: layers must be >= 1")


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
        check(self.prenet_d_model % self.prenet_heads == 0, "flow: prenet_d_model not divisible by prenet_heads")
        check(len(self.channels) == 1, "flow: only a single U-Net level (channels=[C]) is supported, as published")
        check(self.diffusion_steps >= 1, "flow: diffusion_steps must be >= 1")


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
        check(len(self.upsample_kernel_sizes) == n, "vocoder: upsample rates and kernel sizes differ in length")
        check(len(self.source_resblock_kernel_sizes) == n, "vocoder: need one source resblock per upsample")
        check(self.base_channels % (2**n) == 0, "vocoder: base_channels must halve cleanly per upsample")
