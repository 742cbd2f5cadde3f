"""The flow decoder's velocity estimator: a causal 1-D U-Net (Matcha / CosyVoice layout, spec §10).

Keys follow CosyVoice's causal ``ConditionalDecoder`` (the class the published
flow decoder instantiates with ``causal=True``): ``time_mlp.linear_{1,2}``,
``down_blocks.0.{0,1.j,2}``, ``mid_blocks.i.{0,1.j}``, ``up_blocks.0.{0,1.j,2}``,
``final_block``, ``final_proj``. Only one U-Net level is published
(``channels=[C]``), so the down and up "samplers" are causal k=3 convolutions and
every level runs at the input's frame rate with the same mask.

Masking, as the reference does it (spec §16):
- Attention is block-causal in static chunks: frame i sees keys j with
  j < (i // chunk + 1) * chunk, and only real keys. A padded query still attends
  (its row is not empty with right padding), its value is simply discarded.
- Conv blocks multiply their input and output by the mask; the velocity is
  multiplied by the mask, so padded frames get velocity 0 and the solver leaves
  the raw noise there. Those frames must be ignored downstream.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.layers import NEG_INF, attention, merge_heads, split_heads

TIME_SCALE = 1000.0  # Matcha's SinusoidalPosEmb scale: t in [0, 1] spans the table like integer steps
FFN_MULT = 4  # diffusers FeedForward default: 256 -> 1024 -> 256 at 7B


class CausalConv1d(nn.Conv1d):
    """Left-padded convolution: frame i sees frames i - k + 1 .. i only."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__(c_in, c_out, kernel)
        self.left = kernel - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, (self.left, 0)))


class Transpose12(nn.Module):
    """Parameter-free slot that keeps ``block.0`` / ``block.2`` at their checkpoint indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class CausalBlock1D(nn.Module):
    """CausalConv1d(k 3) -> LayerNorm over channels -> Mish, masked on the way in and out."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.block = nn.Sequential(CausalConv1d(c_in, c_out, 3), Transpose12(), nn.LayerNorm(c_out), Transpose12(),
                                   nn.Mish())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class CausalResnetBlock1D(nn.Module):
    def __init__(self, c_in: int, c_out: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, c_out))
        self.block1 = CausalBlock1D(c_in, c_out)
        self.block2 = CausalBlock1D(c_out, c_out)
        self.res_conv = nn.Conv1d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(temb).unsqueeze(-1)
        return self.block2(h, mask) + self.res_conv(x * mask)


class Attention(nn.Module):
    """diffusers ``Attention`` as the U-Net uses it: no q/k/v bias, inner width heads * head_dim."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(p(x), self.heads) for p in (self.to_q, self.to_k, self.to_v))
        return self.to_out[0](merge_heads(attention(q, k, v, bias)))


class GELUProj(nn.Module):
    """diffusers ``GELU``: a projection then exact GELU, stored as ``net.0.proj``."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(GELUProj(dim, FFN_MULT * dim), nn.Identity(), nn.Linear(FFN_MULT * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention and FFN; the published block has no cross-attention (no norm2/attn2)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), bias)
        return x + self.ff(self.norm3(x))


class TimestepEmbedding(nn.Module):
    def __init__(self, c_in: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(c_in, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(nn.functional.silu(self.linear_1(x)))


def time_sinusoids(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) -> (B, dim): Matcha's SinusoidalPosEmb (sin half then cos half, scale 1000)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / (half - 1)))
    args = TIME_SCALE * t.float().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def chunk_attention_bias(mask: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, 1, T) float mask -> (B, 1, T, T) additive bias: real keys, block-causal in chunks (none if chunk <= 0).

    The reference forces an all-false row to all-true; with a finite NEG_INF such a row (only a
    zero-length item has one) is a uniform shift of its scores, which softmax ignores the same way.
    """
    t = mask.shape[-1]
    keep = mask.unsqueeze(1) > 0.5
    if chunk > 0:
        idx = torch.arange(t, device=mask.device)
        visible = idx.unsqueeze(0) < (torch.div(idx, chunk, rounding_mode="floor") + 1).unsqueeze(1) * chunk
        keep = keep & visible
    return torch.where(keep, 0.0, NEG_INF)


def _transformers(blocks: nn.ModuleList, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    h = x.transpose(1, 2)
    for block in blocks:
        h = block(h, bias)
    return h.transpose(1, 2)


def _transformer_stack(dim: int, cfg: ModelConfig) -> nn.ModuleList:
    f = cfg.flow
    return nn.ModuleList(BasicTransformerBlock(dim, f.num_heads, f.attention_head_dim) for _ in range(f.n_blocks))


class FlowEstimator(nn.Module):
    """``audio_flow_matching_decoder.conditional_decoder.*`` of the checkpoint."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        f = cfg.flow
        c, c_in, tdim = f.channels[0], 2 * f.mel_bins, f.time_embed_dim
        self.time_dim_in = c_in
        self.static_chunk_size = f.static_chunk_size
        self.time_mlp = TimestepEmbedding(c_in, tdim)
        self.down_blocks = nn.ModuleList([nn.ModuleList([
            CausalResnetBlock1D(c_in, c, tdim), _transformer_stack(c, cfg), CausalConv1d(c, c, 3)])])
        self.mid_blocks = nn.ModuleList(nn.ModuleList([CausalResnetBlock1D(c, c, tdim), _transformer_stack(c, cfg)])
                                        for _ in range(f.num_mid_blocks))
        self.up_blocks = nn.ModuleList([nn.ModuleList([
            CausalResnetBlock1D(2 * c, c, tdim), _transformer_stack(c, cfg), CausalConv1d(c, c, 3)])])
        self.final_block = CausalBlock1D(c, c)
        self.final_proj = nn.Conv1d(c, f.mel_bins, 1)

    def forward(self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x, mu (B, mel, T), t (B,), mask (B, 1, T) float -> velocity (B, mel, T), zero on padded frames."""
        temb = self.time_mlp(time_sinusoids(t, self.time_dim_in))
        bias = chunk_attention_bias(mask, self.static_chunk_size)
        h = torch.cat([x, mu], dim=1)
        resnet, blocks, down = self.down_blocks[0]
        h = _transformers(blocks, resnet(h, mask, temb), bias)
        skip = h
        h = down(h * mask)
        for resnet, blocks in self.mid_blocks:
            h = _transformers(blocks, resnet(h, mask, temb), bias)
        resnet, blocks, up = self.up_blocks[0]
        h = _transformers(blocks, resnet(torch.cat([h, skip], dim=1), mask, temb), bias)
        h = self.final_block(up(h * mask), mask)
        return self.final_proj(h * mask) * mask
