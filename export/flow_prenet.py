"""The flow decoder's pre-net: 50 Hz detokenizer states -> mu, the condition of the U-Net (spec §10).

Layout follows the published ``FlowmatchingPrenet``: an MLP, causal pre-norm
Whisper-style layers with RMSNorm and no positional encoding, a final RMSNorm and
a bias-free projection to the mel bins. The published attention has a bias on
q/v/out but not on k (Whisper's layout). The published module also registers a
sinusoidal ``positional_embedding`` buffer that its forward never reads; it is
not part of this module, so a loader must skip that key.

The published code packs sequences and runs varlen causal attention; with right
padding, plain causal attention gives the real frames the same values, and the
packed path leaves padded frames at zero, which ``mask`` reproduces.
"""

from __future__ import annotations

import torch
from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.layers import RMSNorm, causal_bias
from bcaudio.export.whisper_layer import WhisperAttention


class PrenetLayer(nn.Module):
    """Pre-norm causal layer; GELU is the exact (erf) form, as ``ACT2FN["gelu"]``."""

    def __init__(self, d: int, heads: int, ffn_dim: int, eps: float) -> None:
        super().__init__()
        self.self_attn = WhisperAttention(d, heads)  # same projections and biases as the encoder's
        self.self_attn_layer_norm = RMSNorm(d, eps)
        self.fc1 = nn.Linear(d, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d)
        self.final_layer_norm = RMSNorm(d, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), bias)
        return x + self.fc2(nn.functional.gelu(self.fc1(self.final_layer_norm(x))))


class FlowPrenet(nn.Module):
    """``audio_flow_matching_decoder.prenet.*`` of the checkpoint."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        f = cfg.flow
        self.in_mlp = nn.Sequential(nn.Linear(f.prenet_in_dim, f.prenet_hidden_dim), nn.SiLU(),
                                    nn.Linear(f.prenet_hidden_dim, f.prenet_d_model))
        self.transformer_layers = nn.ModuleList(
            PrenetLayer(f.prenet_d_model, f.prenet_heads, f.prenet_ffn_dim, f.rms_norm_eps)
            for _ in range(f.prenet_layers))
        self.final_norm = RMSNorm(f.prenet_d_model, f.rms_norm_eps)
        self.out_proj = nn.Linear(f.prenet_d_model, f.mel_bins, bias=False)

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """states (B, T, C), mask (B, T) of 1 = real frame (right padding) -> mu (B, mel_bins, T).

        The published model runs at the states' own rate (its length scale ratio is 1 for 50 Hz
        states and 50 Hz mel), so its nearest-neighbour resampling is the identity and is left out.
        """
        t = states.shape[1]
        bias = causal_bias(t, t, states.device)
        h = self.in_mlp(states)
        for layer in self.transformer_layers:
            h = layer(h, bias)
        mu = self.out_proj(self.final_norm(h))
        if mask is not None:
            mu = mu * mask.unsqueeze(-1).to(mu.dtype)
        return mu.transpose(1, 2)
