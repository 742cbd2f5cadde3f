"""The audio head: a depth transformer that writes the codebooks of one frame (spec §7).

Depth position 0 is the LLM's last hidden state; position k > 0 is the running
sum of the audio embeddings of codes 0..k-1 (the LLM's own input tables). Every
depth position has its own FFN weights, so a step must know its position. The
step form (one position, a small depth KV cache) is what generation and the
exported step graph use; the teacher-forced form checks it.
"""

from __future__ import annotations

import torch
from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.layers import RMSNorm, attention, causal_bias, merge_heads, split_heads

DepthKV = list[tuple[torch.Tensor, torch.Tensor]]


class DepthLayer(nn.Module):
    """Pre-norm attention, then ``r = norm(x)`` as both FFN input and residual, with a per-position FFN.

    linear1/linear2 are stored as the checkpoint has them ((2d, P*d) and (d, P*2d)) and viewed
    per position; their biases exist in the checkpoint and are unused by the model.
    """

    def __init__(self, d: int, heads: int, positions: int, eps: float) -> None:
        super().__init__()
        self.d, self.heads, self.positions = d, heads, positions
        self.self_attention = nn.Module()
        self.self_attention.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.self_attention.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.self_attention.out_proj = nn.Linear(d, d, bias=True)
        self.layernorm1 = RMSNorm(d, eps)
        self.layernorm2 = RMSNorm(d, eps)
        self.linear1 = nn.Linear(positions * d, 2 * d, bias=True)
        self.linear2 = nn.Linear(positions * 2 * d, d, bias=True)
        nn.init.xavier_uniform_(self.self_attention.in_proj_weight)

    def ffn_weights(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(2d, d) and (d, 2d) weights of depth position ``pos``."""
        w1 = self.linear1.weight.view(2 * self.d, self.positions, self.d)[:, pos]
        w2 = self.linear2.weight.view(self.d, self.positions, 2 * self.d)[:, pos]
        return w1, w2

    def attend(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
               bias: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        qkv = nn.functional.linear(self.layernorm1(x), self.self_attention.in_proj_weight,
                                   self.self_attention.in_proj_bias)
        q, k, v = (split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        return x + self.self_attention.out_proj(merge_heads(attention(q, k, v, bias))), (k, v)

    def ffn(self, r: torch.Tensor, pos: int) -> torch.Tensor:
        w1, w2 = self.ffn_weights(pos)
        return r + nn.functional.linear(nn.functional.gelu(nn.functional.linear(r, w1)), w2)


class AudioHead(nn.Module):
    """``audio_head.*`` of the checkpoint."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.llm.hidden_size
        self.sizes = list(cfg.bridge.codebook_sizes)
        self.positions = len(self.sizes)
        self.transformer_layers = nn.ModuleList(
            DepthLayer(d, cfg.audio_head_heads, self.positions, cfg.audio_head.rms_norm_eps)
            for _ in range(cfg.audio_head.layers))
        self.headnorm = RMSNorm(d, cfg.audio_head.rms_norm_eps)
        self.heads = nn.ModuleList(nn.Linear(d, n + 1) for n in self.sizes)

    def step(self, x: torch.Tensor, pos: int, cache: DepthKV | None) -> tuple[torch.Tensor, DepthKV]:
        """One depth position: x (B, d) -> logits of codebook ``pos`` (B, size+1), the grown cache."""
        h = x.unsqueeze(1)
        new_cache = []
        for i, layer in enumerate(self.transformer_layers):
            h, kv = layer.attend(h, None if cache is None else cache[i], None)
            new_cache.append(kv)
            h = layer.ffn(layer.layernorm2(h), pos)
        return self.heads[pos](self.headnorm(h[:, 0])), new_cache

    def teacher_forced(self, depth_inputs: torch.Tensor) -> list[torch.Tensor]:
        """All positions at once from (B, P, d) inputs [h, c1, ..., c7]: the oracle for :meth:`step`."""
        p = depth_inputs.shape[1]
        bias = causal_bias(p, p)
        h = depth_inputs
        for layer in self.transformer_layers:
            h, _ = layer.attend(h, None, bias)
            r = layer.layernorm2(h)
            h = torch.stack([layer.ffn(r[:, i], i) for i in range(p)], dim=1)
        normed = self.headnorm(h)
        return [self.heads[i](normed[:, i]) for i in range(p)]


def depth_inputs(hidden: torch.Tensor, codes: torch.Tensor, tables: nn.ModuleList) -> torch.Tensor:
    """[h, c1..c7] with c_k = sum_{j<k} table_j(code_j): (B, d), (B, P) -> (B, P, d)."""
    items = [hidden]
    running = torch.zeros_like(hidden)
    for k in range(codes.shape[1] - 1):
        running = running + tables[k](codes[:, k])
        items.append(running)
    return torch.stack(items, dim=1)
