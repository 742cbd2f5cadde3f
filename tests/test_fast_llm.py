"""The fused-operator llm graph (GroupQueryAttention, shared KV buffer) vs the torch reference and the plain graph."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bcaudio.config import ModelConfig
from bcaudio.export.export_llm import export_llm
from bcaudio.export.fast_llm import export_fast_llm
from bcaudio.export.llm import BaichuanLLM
from bcaudio.presets import tiny
from bcaudio.runtime.package.llm_state import LlmState

# fp32 parity bound, the same as the plain graph's (FP32_TOLERANCES["llm"] in export/validate.py)
ATOL = 1e-4


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelConfig, BaichuanLLM, ort.InferenceSession,
                                                             ort.InferenceSession]:
    cfg = tiny()
    torch.manual_seed(0)
    llm = BaichuanLLM(cfg.llm, cfg.bridge.codebook_sizes, cfg.tokens).eval()
    with torch.no_grad():  # non-trivial norms and biases so a mapping mistake cannot hide
        for name, p in llm.named_parameters():
            if name.endswith("norm.weight") or name.endswith("W_pack.bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (0 if name.endswith("bias") else 1))
    folder = tmp_path_factory.mktemp("fast_llm")
    export_fast_llm(llm, cfg, folder / "fast.onnx")
    export_llm(llm, cfg, folder / "plain.onnx")
    open_ = lambda name: ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])  # noqa: E731
    return cfg, llm, open_("fast.onnx"), open_("plain.onnx")


def _state(cfg: ModelConfig, session: ort.InferenceSession, **kw: object) -> LlmState:
    return LlmState(session, cfg.llm.kv_heads, cfg.llm.head_dim, cfg.bridge.num_codebooks, **kw)


def _prompt(cfg: ModelConfig, n: int, seed: int) -> tuple[list[int], np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.tokens.eos, n)
    ids[n // 3: 2 * n // 3] = cfg.tokens.audio_pad  # text, audio frames, text
    codes = np.stack([rng.integers(0, s + 1, n) for s in cfg.bridge.codebook_sizes], axis=-1)
    return ids.tolist(), codes


def _torch_all(cfg: ModelConfig, llm: BaichuanLLM, ids: list[int], codes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Logits at every position and final hidden states from one full torch forward."""
    with torch.no_grad():
        t_ids, t_codes = torch.tensor([ids]), torch.from_numpy(codes)[None]
        _, hidden, _ = llm(t_ids, t_codes, torch.arange(len(ids))[None], llm.empty_cache())
        return llm.lm_head(hidden)[0].numpy(), hidden[0].numpy()


def chunked_gap(cfg: ModelConfig, llm: BaichuanLLM, fast: ort.InferenceSession, chunks: list[int]) -> float:
    """The fast graph fed a prompt in ``chunks`` (from a small start capacity, so the buffer grows while
    feeding) against one torch forward of ``llm``: the largest difference in logits or hidden state at each
    chunk's last position. The one comparison the parity test and its negative control both make."""
    ids, codes = _prompt(cfg, sum(chunks), seed=len(chunks))
    logits, hidden = _torch_all(cfg, llm, ids, codes)
    state, at, gap = _state(cfg, fast, kv_capacity=4), 0, 0.0
    for n in chunks:
        got_logits, got_hidden = state.feed(ids[at:at + n], codes[at:at + n])
        at += n
        gap = max(gap, float(np.abs(got_logits - logits[at - 1]).max()),
                  float(np.abs(got_hidden - hidden[at - 1]).max()))
    assert state.position == at and state.capacity >= at
    return gap


@pytest.mark.parametrize("chunks", [[23], [9, 1, 1, 5, 1, 6], [1] * 23])
def test_fast_graph_matches_torch_in_any_chunking(graphs, chunks: list[int]) -> None:
    """Prefill in one go, chunked prefill (the live path) and token by token all equal one torch forward."""
    cfg, llm, fast, _ = graphs
    assert chunked_gap(cfg, llm, fast, chunks) < ATOL


def test_parity_bound_fails_on_one_weight_scaled_by_1e_3(graphs) -> None:
    """The negative control: the last layer's down projection scaled by 1 + 1e-3 on the torch side puts the
    same comparison past ATOL."""
    cfg, llm, fast, _ = graphs
    perturbed = copy.deepcopy(llm)
    with torch.no_grad():
        perturbed.model.layers[-1].mlp.down_proj.weight.mul_(1 + 1e-3)
    assert chunked_gap(cfg, perturbed, fast, [9, 1, 1, 5, 1, 6]) > ATOL


def test_fast_and_plain_graphs_generate_the_same_greedy_tokens(graphs) -> None:
    cfg, _, fast, plain = graphs
    ids, codes = _prompt(cfg, 12, seed=7)
    outs = []
    for session in (fast, plain):
        state = _state(cfg, session)
        logits, _ = state.feed(ids, codes)
        tokens = []
        for _ in range(40):
            tokens.append(int(logits.argmax()))
            logits, _ = state.feed(tokens[-1:])
        outs.append(tokens)
    assert outs[0] == outs[1]


def test_truncate_then_continue_equals_never_having_fed(graphs) -> None:
    """Barge-in: cut the cache back and feed something else; the result is as if the cut part never was."""
    cfg, _, fast, _ = graphs
    ids, codes = _prompt(cfg, 20, seed=3)
    state = _state(cfg, fast, kv_capacity=8)
    state.feed(ids[:10], codes[:10])
    state.feed(ids[10:], codes[10:])
    state.truncate(10)
    logits, hidden = state.feed([5, 6, 7])
    fresh = _state(cfg, fast)
    fresh.feed(ids[:10], codes[:10])
    want_logits, want_hidden = fresh.feed([5, 6, 7])
    np.testing.assert_allclose(logits, want_logits, atol=1e-6, rtol=0)
    np.testing.assert_allclose(hidden, want_hidden, atol=1e-6, rtol=0)
    for name, value in state.cache().items():
        np.testing.assert_allclose(value, fresh.cache()[name], atol=1e-6, rtol=0)


def test_capacity_starts_small_and_never_passes_the_model_limit(graphs) -> None:
    cfg, _, fast, _ = graphs
    state = _state(cfg, fast, kv_capacity=16, max_positions=40)
    assert state.capacity == 16 and state.past["past_key.0"].shape()[2] == 16
    state.feed(list(range(17)))
    assert state.capacity == 32
    state.feed(list(range(20)))
    assert state.capacity == 40  # doubling is capped at the model's positions
    with pytest.raises(ValueError, match="exceed"):
        state.feed(list(range(4)))
