"""The tokenizer's Whisper-style audio encoder: 100 Hz log-mel -> 50 Hz states (spec §2, §16).

Keys match the checkpoint's ``audio_tokenizer.audio_model.*``. The positional table is a
buffer in the state dict: the checkpoint stores it bf16-rounded, and recomputing it would
differ by ~1e-3, so a loaded model uses the stored one; sinusoids are only the initial value.

Variable length: the reference packs each chunk's real frames and runs varlen attention, so a
chunk never attends to padding. With ``mel_lengths`` a padded batch gets the same result per
item: padded mel frames and the conv1 output past each length are zeroed (what conv2's zero
padding gives an unpadded chunk), attention keys past the length are masked, and padded
output frames are zero, as the reference's unpacking writes them.
"""

from __future__ import annotations

import torch
from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.layers import sinusoids
from bcaudio.export.whisper_layer import WhisperLayer, key_padding_bias


def encoder_frames(mel_frames: int | torch.Tensor) -> int | torch.Tensor:
    """50 Hz encoder frames for a number of mel frames (conv2: kernel 3, stride 2, pad 1)."""
    return (mel_frames - 1) // 2 + 1


def _time_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, 1, frames) 1.0 on real frames, 0.0 on padding."""
    return (torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]).float()[:, None, :]


class AudioEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        e, mels = cfg.encoder, cfg.frontend.num_mel_bins
        self.conv1 = nn.Conv1d(mels, e.d_model, kernel_size=e.kernel_size, padding=e.kernel_size // 2)
        self.conv2 = nn.Conv1d(e.d_model, e.d_model, kernel_size=e.kernel_size, stride=e.stride,
                               padding=e.kernel_size // 2)
        self.register_buffer("positional_embedding", sinusoids(e.max_source_positions, e.d_model))
        self.layers = nn.ModuleList(WhisperLayer(e.d_model, e.heads, e.ffn_dim) for _ in range(e.layers))
        self.layer_norm = nn.LayerNorm(e.d_model)

    def stem(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """conv1 + GELU, conv2 + GELU, + positions: (B, mels, T) -> (B, (T - 1) // 2 + 1, d)."""
        if mel_lengths is not None:
            mel = mel * _time_mask(mel_lengths, mel.shape[-1])
        h = nn.functional.gelu(self.conv1(mel))
        if mel_lengths is not None:
            h = h * _time_mask(mel_lengths, h.shape[-1])
        h = nn.functional.gelu(self.conv2(h)).transpose(1, 2)
        return h + self.positional_embedding[: h.shape[1]]

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """mel (B, mels, T), optional valid mel frames per item (B,) int64 -> (B, (T - 1) // 2 + 1, d)."""
        h = self.stem(mel, mel_lengths)
        bias = None
        if mel_lengths is not None:
            lengths = encoder_frames(mel_lengths)
            bias = key_padding_bias(lengths, h.shape[1], h.dtype)
        for layer in self.layers:
            h = layer(h, bias)
        h = self.layer_norm(h)
        if mel_lengths is not None:
            h = h * _time_mask(lengths, h.shape[1]).transpose(1, 2)
        return h
