"""The numpy sampler against transformers' logits processors (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcaudio.config import SamplingParams
from bcaudio.runtime.generation.sampling import apply_repetition_penalty, sample_token

transformers = pytest.importorskip("transformers")


def _kept(params: SamplingParams, logits: np.ndarray) -> set[int]:
    """Ids that transformers' warpers leave finite."""
    warpers = [transformers.TemperatureLogitsWarper(params.temperature)]
    if params.top_k:
        warpers.append(transformers.TopKLogitsWarper(params.top_k))
    warpers.append(transformers.TopPLogitsWarper(params.top_p))
    procs = transformers.LogitsProcessorList(warpers)
    out = procs(torch.zeros(1, 1, dtype=torch.long), torch.tensor(logits[None], dtype=torch.float32))
    return set(np.flatnonzero(torch.isfinite(out[0]).numpy()).tolist())


def test_repetition_penalty_matches_transformers() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(50)
    history = [3, 7, 7, 11, 49]
    ref = transformers.RepetitionPenaltyLogitsProcessor(1.3)(
        torch.tensor([history]), torch.tensor(logits[None], dtype=torch.float32))[0].numpy()
    assert np.allclose(apply_repetition_penalty(logits, history, 1.3), ref, atol=1e-6)


@pytest.mark.parametrize("top_k,top_p", [(20, 0.85), (5, 0.85), (0, 0.5), (3, 1.0)])
def test_sampled_ids_stay_inside_transformers_support(top_k: int, top_p: float) -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(200) * 3
    params = SamplingParams(temperature=0.8, top_k=top_k, top_p=top_p, repetition_penalty=1.0)
    allowed = _kept(params, logits)
    draws = {sample_token(logits, params, [], np.random.default_rng(s)) for s in range(300)}
    assert draws <= allowed
    assert len(draws) >= min(len(allowed), 2)


def test_greedy_and_seeded_sampling_are_deterministic() -> None:
    logits = np.random.default_rng(2).standard_normal(100)
    assert sample_token(logits, SamplingParams(temperature=0.0), [], np.random.default_rng(0)) == int(logits.argmax())
    params = SamplingParams(0.8, 20, 0.85, 1.1)
    a = [sample_token(logits, params, [1, 2], np.random.default_rng(5)) for _ in range(3)]
    b = [sample_token(logits, params, [1, 2], np.random.default_rng(5)) for _ in range(3)]
    assert a == b


def _full_vocabulary_draw(logits: np.ndarray, params: SamplingParams, history: list[int],
                          rng: np.random.Generator) -> int:
    """The plain form: every step over the whole vocabulary (what sample_token shortcuts with top-k)."""
    scores = apply_repetition_penalty(np.asarray(logits, dtype=np.float64), history, params.repetition_penalty)
    scores = scores / params.temperature
    kth = np.partition(scores, -params.top_k)[-params.top_k]
    scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep = order[: int(np.searchsorted(np.cumsum(probs[order]), params.top_p) + 1)]
    mask = np.zeros_like(probs)
    mask[keep] = probs[keep]
    return int(rng.choice(probs.shape[-1], p=mask / mask.sum()))


def test_top_k_candidates_draw_the_same_token_as_the_whole_vocabulary() -> None:
    for seed in range(200):
        r = np.random.default_rng(seed)
        logits = (3 * r.standard_normal(4000)).astype(np.float32)
        logits[:64] = np.round(logits[:64])  # ties at the k-th score
        history = r.integers(0, 4000, 30).tolist()
        for params in (SamplingParams(0.8, 20, 0.85, 1.1, 50), SamplingParams(0.5, 5, 0.85, 1.3, 50),
                       SamplingParams(1.0, 50, 0.999, 1.0, 50)):
            got = sample_token(logits, params, history, np.random.default_rng(seed))
            assert got == _full_vocabulary_draw(logits, params, history, np.random.default_rng(seed))
