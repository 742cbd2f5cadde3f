"""Audio detokenizer: 12.5 Hz RVQ codes -> 50 Hz states that condition the flow decoder (spec §9).

Keys match ``audio_tokenizer.audio_decoder.*``: ``dconv1.conv`` (ConvTranspose1d, kernel
``decoder_kernel_size``, stride ``avg_pooler``), ``dconv1.norm`` (GroupNorm, one group),
``positional_embedding`` (stored table, loaded rather than recomputed, spec §16), causal
``layers.{i}`` and ``layer_norm``. The checkpoint's ``dconv2``/``post_net`` (coarse-mel branch)
are unused at inference and deliberately absent.

Causality, exactly: with kernel 3 < stride 4 the transposed conv has no overlap, token t writes
frames 4t..4t+2 and frame 4t+3 is bias only, and the layers are causal. But GroupNorm with one
group normalises over all channels *and all frames* of the segment, so its mean and variance
depend on every token: the detokenizer as published is not causal, only the part after the
norm is (``upsample`` then ``transform``). Chunked streaming inside a segment therefore cannot
match whole-segment decoding exactly; the reference decodes whole segments.
"""

from __future__ import annotations

import torch
from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.bridge import AudioBridge
from bcaudio.export.layers import sinusoids
from bcaudio.export.whisper_layer import WhisperLayer


class CausalConvTranspose1d(nn.Module):
    def __init__(self, channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(channels, channels, kernel_size, stride)
        self.norm = nn.GroupNorm(1, channels)
        # The reference trims kernel - stride frames on the right when the kernel is the longer one.
        self.trim = max(0, kernel_size - stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, (T - 1) * stride + kernel - trim, C)."""
        h = self.norm(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return h[:, : h.shape[1] - self.trim] if self.trim else h


class AudioDetokenizer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, dt = cfg.encoder.d_model, cfg.detokenizer
        self.dconv1 = CausalConvTranspose1d(d, dt.kernel_size, cfg.bridge.avg_pooler)
        self.register_buffer("positional_embedding", sinusoids(dt.max_positions, d))
        self.layers = nn.ModuleList(WhisperLayer(d, dt.heads, dt.ffn_dim, causal=True) for _ in range(dt.layers))
        self.layer_norm = nn.LayerNorm(d)

    def upsample(self, codes: torch.Tensor, bridge: AudioBridge) -> torch.Tensor:
        """codes (B, T, num_codebooks) -> normalised 50 Hz frames (B, 4T - 1, d): the non-causal part."""
        return self.dconv1(bridge.decode(codes))

    def transform(self, frames: torch.Tensor) -> torch.Tensor:
        """Positions, causal layers, final LayerNorm: (B, F, d) -> (B, F, d); frame f sees frames <= f only."""
        h = frames + self.positional_embedding[: frames.shape[1]]
        for layer in self.layers:
            h = layer(h)
        return self.layer_norm(h)

    def forward(self, codes: torch.Tensor, bridge: AudioBridge) -> torch.Tensor:
        """codes (B, T, num_codebooks) int64 -> states (B, 4T - 1, d_model)."""
        return self.transform(self.upsample(codes, bridge))
