"""Qwen2-style LLM of Baichuan-Audio (spec §5), written for export with a KV cache.

One forward serves prefill and decode: text ids and audio codes enter together
and a position is an audio frame exactly when its id is ``<audio_pad_baichuan>``
(the official scheme), so no separate audio flag is needed. The graph returns
logits of the *last* position only (a long prefill never pays for
``T x vocab`` logits it throws away) and the final-normed hidden states of every
position (the audio head reads the last one; parity tests read them all).

KV layout per layer: ``(batch, kv_heads, length, head_dim)``; the present cache
is the past with the new positions appended on the length axis.
"""

from __future__ import annotations

import torch
from torch import nn

from bcaudio.config import LLMConfig, SpecialTokens
from bcaudio.export.layers import NEG_INF, RMSNorm, causal_bias

KV = tuple[torch.Tensor, torch.Tensor]


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (B, 1, T, head_dim) for rotate-half RoPE, computed in fp32 like Qwen2."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """GQA attention with the fused ``W_pack`` (q, k, v rows in that order, with bias)."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.W_pack = nn.Linear(cfg.hidden_size, (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim, bias=True)
        self.o_proj = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor,
                past: KV) -> tuple[torch.Tensor, KV]:
        b, t, _ = x.shape
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = self.W_pack(x).split([q_size, kv_size, kv_size], dim=-1)
        q = apply_rotary(q.reshape(b, t, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = apply_rotary(k.reshape(b, t, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = v.reshape(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        k = torch.cat([past[0], k], dim=2)
        v = torch.cat([past[1], v], dim=2)
        # Fold the query heads of one KV group into the query axis instead of repeating K/V:
        # (B, kv, rep*T, D) x (B, kv, S, D) reads the cache once per group, with no copy.
        rep = self.heads // self.kv_heads
        qg = q.reshape(b, self.kv_heads, rep * t, self.head_dim)
        scores = torch.matmul(qg, k.transpose(-1, -2)) * (self.head_dim**-0.5) + bias
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        out = out.reshape(b, self.heads, t, self.head_dim).transpose(1, 2).reshape(b, t, q_size)
        return self.o_proj(out), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor,
                past: KV) -> tuple[torch.Tensor, KV]:
        attn, present = self.self_attn(self.input_layernorm(x), cos, sin, bias, past)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), present


class LLMBody(nn.Module):
    """The ``model.*`` subtree of the checkpoint."""

    def __init__(self, cfg: LLMConfig, codebook_sizes: list[int]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # One extra row per table: index == size is the end-of-audio code.
        self.audio_embed_layers = nn.ModuleList(nn.Embedding(n + 1, cfg.hidden_size) for n in codebook_sizes)

    def audio_embedding(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the per-codebook embeddings of ``codes`` (..., num_codebooks)."""
        out = self.audio_embed_layers[0](codes[..., 0])
        for i in range(1, len(self.audio_embed_layers)):
            out = out + self.audio_embed_layers[i](codes[..., i])
        return out


class BaichuanLLM(nn.Module):
    """LLM with the checkpoint's top-level layout: ``model.*`` and ``lm_head``."""

    def __init__(self, cfg: LLMConfig, codebook_sizes: list[int], tokens: SpecialTokens) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_pad_id = tokens.audio_pad
        self.model = LLMBody(cfg, codebook_sizes)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def embed(self, input_ids: torch.Tensor, audio_codes: torch.Tensor) -> torch.Tensor:
        is_audio = (input_ids == self.audio_pad_id).unsqueeze(-1)
        return torch.where(is_audio, self.model.audio_embedding(audio_codes), self.model.embed_tokens(input_ids))

    def forward(self, input_ids: torch.Tensor, audio_codes: torch.Tensor, position_ids: torch.Tensor,
                past: list[KV]) -> tuple[torch.Tensor, torch.Tensor, list[KV]]:
        """-> (last-position logits (B, vocab), final-normed hidden (B, T, H), presents)."""
        x = self.embed(input_ids, audio_codes)
        t = input_ids.shape[1]
        cos, sin = rotary_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        bias = self._bias(t, past[0][0].shape[2] + t)
        presents = []
        for layer, kv in zip(self.model.layers, past, strict=True):
            x, present = layer(x, cos, sin, bias, kv)
            presents.append(present)
        hidden = self.model.norm(x)
        return self.lm_head(hidden[:, -1]), hidden, presents

    def _bias(self, t: int, s: int) -> torch.Tensor:
        """Causal bias tiled over the query heads folded into each KV group: (rep*T, S)."""
        rep = self.cfg.heads // self.cfg.kv_heads
        return causal_bias(t, s).repeat(rep, 1).clamp(min=NEG_INF)

    def empty_cache(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> list[KV]:
        shape = (batch, self.cfg.kv_heads, 0, self.cfg.head_dim)
        return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in range(self.cfg.layers)]
