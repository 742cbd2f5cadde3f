"""Audio head: the step form (depth KV cache) equals the teacher-forced form; per-position FFN layout."""

from __future__ import annotations

import torch

from bcaudio.config import ModelConfig
from bcaudio.export.audio_head import AudioHead, depth_inputs
from bcaudio.export.llm import LLMBody


def test_step_with_depth_cache_equals_teacher_forced(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    head = AudioHead(tiny_cfg).eval()
    tables = LLMBody(tiny_cfg.llm, tiny_cfg.bridge.codebook_sizes).audio_embed_layers
    hidden = torch.randn(2, tiny_cfg.llm.hidden_size)
    codes = torch.stack([torch.randint(0, n, (2,)) for n in tiny_cfg.bridge.codebook_sizes], dim=1)
    with torch.no_grad():
        inputs = depth_inputs(hidden, codes, tables)
        forced = head.teacher_forced(inputs)
        cache = None
        for pos in range(len(tiny_cfg.bridge.codebook_sizes)):
            logits, cache = head.step(inputs[:, pos], pos, cache)
            assert logits.shape == (2, tiny_cfg.bridge.codebook_sizes[pos] + 1)
            assert (logits - forced[pos]).abs().max() < 1e-5
    assert cache[0][0].shape[2] == 8


def test_depth_inputs_are_running_sums_of_code_embeddings(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    tables = LLMBody(tiny_cfg.llm, tiny_cfg.bridge.codebook_sizes).audio_embed_layers
    hidden = torch.randn(1, tiny_cfg.llm.hidden_size)
    codes = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    inputs = depth_inputs(hidden, codes, tables)
    assert torch.equal(inputs[:, 0], hidden)
    expected = tables[0](codes[:, 0]) + tables[1](codes[:, 1]) + tables[2](codes[:, 2])
    assert torch.allclose(inputs[:, 3], expected)


def test_per_position_ffn_views_the_stored_layout(tiny_cfg: ModelConfig) -> None:
    """linear1 (2d, 8d) reshaped to (2d, 8, d): position l's weight is the l-th d-wide column block."""
    head = AudioHead(tiny_cfg)
    layer = head.transformer_layers[0]
    d = tiny_cfg.llm.hidden_size
    assert layer.linear1.weight.shape == (2 * d, 8 * d)
    assert layer.linear2.weight.shape == (d, 16 * d)
    w1, w2 = layer.ffn_weights(3)
    assert torch.equal(w1, layer.linear1.weight[:, 3 * d:4 * d])
    assert torch.equal(w2, layer.linear2.weight[:, 6 * d:8 * d])
