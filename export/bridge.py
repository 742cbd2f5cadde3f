"""50 Hz encoder states -> 12.5 Hz vectors -> residual VQ codes, and codes -> vectors (spec §3, §4, §9).

Keys match ``audio_tokenizer.audio_bridge_model.*``: ``gate_proj``/``up_proj`` (Conv1d, kernel =
stride = avg_pooler, no bias), ``down_proj`` (no bias), ``layer_norm``, ``proj_decoder`` (used by
the detokenizer) and ``vq_list.{i}.codebook.embed`` (size_i, d_model * avg_pooler).

Padding vs floor: the reference pads time up to a multiple of ``avg_pooler``, computes
ceil(T / p) vectors and then keeps only the first ``bridge_length = T // p`` of them (its
processor's ``inference_output_length``). Every kept vector is built from p real frames, so
dropping the incomplete tail group first gives the same tokens without the padded work; that is
what ``forward`` does.
"""

from __future__ import annotations

import torch
from torch import nn

from bcaudio.config import ModelConfig


class EuclideanCodebook(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.randn(size, dim))

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """(N, dim) fp32 -> (N,) index of the nearest code by Euclidean distance.

        The distance is spelled as the reference spells it (|x|^2 + |e|^2 - 2 x.e, clamped at 0,
        square root) so that near-ties round the same way; argmin keeps the first of equal values,
        as the reference's argmax of the negated distance does.
        """
        embed = self.embed.float()
        dist = x.pow(2).sum(-1, keepdim=True) + embed.pow(2).sum(-1)[None, :] + torch.matmul(x, embed.t()) * -2.0
        return torch.argmin(dist.clamp(min=0.0).sqrt(), dim=-1)


class VectorQuantize(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.codebook = EuclideanCodebook(size, dim)


class AudioBridge(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, p = cfg.encoder.d_model, cfg.bridge.avg_pooler
        dim = cfg.rvq_dim
        self.avg_pooler = p
        self.gate_proj = nn.Conv1d(d, dim, kernel_size=p, stride=p, bias=False)
        self.up_proj = nn.Conv1d(d, dim, kernel_size=p, stride=p, bias=False)
        self.down_proj = nn.Linear(dim, dim, bias=False)
        self.layer_norm = nn.LayerNorm(dim)
        self.proj_decoder = nn.Linear(dim, d)
        self.vq_list = nn.ModuleList(VectorQuantize(n, dim) for n in cfg.bridge.codebook_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder states (B, T, d) -> z (B, T // avg_pooler, d * avg_pooler)."""
        b, t, d = x.shape
        tokens = t // self.avg_pooler
        x = x[:, : tokens * self.avg_pooler]
        xt = x.transpose(1, 2)
        g = self.gate_proj(xt).transpose(1, 2)
        u = self.up_proj(xt).transpose(1, 2)
        stacked = x.reshape(b, tokens, self.avg_pooler * d)  # p consecutive frames side by side
        return self.layer_norm(self.down_proj(nn.functional.silu(g) * u) + stacked)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, T, dim) -> codes (B, T, num_codebooks) int64; each stage quantizes the previous residual, fp32."""
        b, t, dim = z.shape
        residual = z.float().reshape(b * t, dim)
        codes = []
        for vq in self.vq_list:
            idx = vq.codebook.nearest(residual)
            residual = residual - vq.codebook.embed.float()[idx]
            codes.append(idx)
        return torch.stack(codes, dim=-1).reshape(b, t, len(codes))

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T, num_codebooks) -> (B, T, dim) fp32 sum of the chosen codebook vectors.

        Summed from the last codebook to the first, the reference's order, so fp32 rounding matches.
        """
        last = len(self.vq_list) - 1
        out = self.vq_list[last].codebook.embed.float()[codes[..., last]]
        for i in range(last - 1, -1, -1):
            out = out + self.vq_list[i].codebook.embed.float()[codes[..., i]]
        return out

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T, num_codebooks) -> detokenizer input (B, T, d_model)."""
        emb = self.dequantize(codes)
        return self.proj_decoder(emb.to(self.proj_decoder.weight.dtype))
