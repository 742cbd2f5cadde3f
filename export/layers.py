"""Building blocks shared by several reference parts, written for ONNX export.

Attention is hand-written (matmul + softmax): ``nn.MultiheadAttention`` and
fused kernels bake sequence lengths into exported graphs or fail at batch 2.
Masks are additive biases so every graph carries one mask convention.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NEG_INF = -1e9  # finite: a fully masked row stays finite in fp16 graphs too


class RMSNorm(nn.Module):
    """Qwen2/T5-style RMS norm; statistics in fp32 whatever the weight dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Casts only when needed: the TorchScript exporter leaves a dangling no-op Cast otherwise.
        xf = x if x.dtype == torch.float32 else x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y if y.dtype == x.dtype else y.to(x.dtype)) * self.weight


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention over (B, H, T, D) x (B, H, S, D); ``bias`` is additive, broadcastable."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype), v)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, H*D) -> (B, H, T, D)."""
    b, t, _ = x.shape
    return x.reshape(b, t, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def causal_bias(q_len: int, k_len: int, device: torch.device | None = None) -> torch.Tensor:
    """(q_len, k_len) additive mask where query i sees keys up to i + (k_len - q_len)."""
    offset = k_len - q_len
    qi = torch.arange(q_len, device=device).unsqueeze(1)
    kj = torch.arange(k_len, device=device).unsqueeze(0)
    return torch.where(kj <= qi + offset, 0.0, NEG_INF)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed position table (length, channels): sin half then cos half."""
    log_inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_inc * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)
