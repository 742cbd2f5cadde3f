"""One pre-LayerNorm Whisper transformer layer, shared by the audio encoder and the detokenizer.

Attribute names are the checkpoint's (``self_attn.{q,k,v,out}_proj``, ``self_attn_layer_norm``,
``fc1``, ``fc2``, ``final_layer_norm``); k_proj has no bias, as in Whisper. The reference runs
these layers on packed sequences with flash-attention's varlen kernel; here a batch is padded and
the padding is hidden from attention by an additive key bias, which gives the same per-sequence
result and exports to plain ONNX ops.
"""

from __future__ import annotations

import torch
from torch import nn

from bcaudio.export.layers import NEG_INF, attention, causal_bias, merge_heads, split_heads


class WhisperAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d_model, d_model, bias=True)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=True)
        self.out_proj = nn.Linear(d_model, d_model, bias=True)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(merge_heads(attention(q, k, v, bias)))


class WhisperLayer(nn.Module):
    """x + attn(LN(x)), then + fc2(gelu(fc1(LN(.)))); GELU is the exact (erf) one, as ACT2FN['gelu']."""

    def __init__(self, d_model: int, heads: int, ffn_dim: int, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.self_attn = WhisperAttention(d_model, heads)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d); ``bias`` additive, broadcastable to (B, heads, T, T); the causal mask is added here."""
        if self.causal:
            t = x.shape[1]
            causal = causal_bias(t, t, x.device).to(x.dtype)
            bias = causal if bias is None else bias + causal
        x = x + self.self_attn(self.self_attn_layer_norm(x), bias)
        return x + self.fc2(nn.functional.gelu(self.fc1(self.final_layer_norm(x))))


def key_padding_bias(lengths: torch.Tensor, frames: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 1, 1, frames) additive bias hiding keys at or past each sequence's length.

    Padded query rows still see their own sequence's real keys, so they stay finite; callers zero them.
    """
    keys = torch.arange(frames, device=lengths.device)
    hidden = keys[None, :] >= lengths[:, None]
    return torch.where(hidden, NEG_INF, 0.0).to(dtype)[:, None, None, :]
