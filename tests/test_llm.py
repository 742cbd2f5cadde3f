"""The LLM reference against transformers' Qwen2 (an independent implementation) and its own KV cache."""

from __future__ import annotations

import pytest
import torch

from bcaudio.config import ModelConfig
from bcaudio.export.llm import BaichuanLLM


def _llm(cfg: ModelConfig, seed: int = 0) -> BaichuanLLM:
    torch.manual_seed(seed)
    model = BaichuanLLM(cfg.llm, cfg.bridge.codebook_sizes, cfg.tokens).eval()
    with torch.no_grad():  # non-trivial norms and biases so a mapping mistake cannot hide
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight") or name.endswith("W_pack.bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (0 if name.endswith("bias") else 1))
    return model


def _qwen2(cfg: ModelConfig, ours: BaichuanLLM):
    pytest.importorskip("transformers")
    from bcaudio.export.hf_qwen2 import to_qwen2

    return to_qwen2(cfg.llm, ours.state_dict())


def test_logits_match_transformers_qwen2(tiny_cfg: ModelConfig) -> None:
    ours = _llm(tiny_cfg)
    hf = _qwen2(tiny_cfg, ours)
    ids = torch.randint(0, 900, (2, 37))
    codes = torch.zeros(2, 37, 8, dtype=torch.long)
    pos = torch.arange(37).expand(2, -1)
    with torch.no_grad():
        last, hidden, _ = ours(ids, codes, pos, ours.empty_cache(2))
        ref = hf(ids).logits
        mine = ours.lm_head(hidden)
    assert (mine - ref).abs().max() < 1e-4
    assert (last - ref[:, -1]).abs().max() < 1e-4


def test_kv_cache_prefill_then_decode_equals_one_prefill(tiny_cfg: ModelConfig) -> None:
    ours = _llm(tiny_cfg, seed=1)
    n, m = 11, 6
    pad = tiny_cfg.tokens.audio_pad
    ids = torch.randint(0, 900, (2, n + m))
    ids[:, 3:7] = pad  # audio frames inside the prompt
    codes = torch.randint(0, 16, (2, n + m, 8))
    pos = torch.arange(n + m).expand(2, -1)
    with torch.no_grad():
        _, full_hidden, _ = ours(ids, codes, pos, ours.empty_cache(2))
        _, hidden, cache = ours(ids[:, :n], codes[:, :n], pos[:, :n], ours.empty_cache(2))
        steps = [hidden]
        for i in range(n, n + m):
            last, hidden, cache = ours(ids[:, i:i + 1], codes[:, i:i + 1], pos[:, i:i + 1], cache)
            steps.append(hidden)
    assert cache[0][0].shape == (2, tiny_cfg.llm.kv_heads, n + m, tiny_cfg.llm.head_dim)
    assert (torch.cat(steps, dim=1) - full_hidden).abs().max() < 1e-5
    assert (last - ours.lm_head(full_hidden[:, -1])).abs().max() < 1e-5


def test_audio_positions_take_summed_codebook_embeddings(tiny_cfg: ModelConfig) -> None:
    ours = _llm(tiny_cfg)
    ids = torch.tensor([[5, tiny_cfg.tokens.audio_pad, 7]])
    codes = torch.randint(0, 16, (1, 3, 8))
    emb = ours.embed(ids, codes)
    body = ours.model
    expected = sum(body.audio_embed_layers[i](codes[0, 1, i]) for i in range(8))
    assert torch.equal(emb[0, 1], expected)
    assert torch.equal(emb[0, 0], body.embed_tokens.weight[5])
