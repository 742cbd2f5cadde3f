"""The numpy sampler against transformers' logits processors (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcaudio.config import SamplingParams
from bcaudio.runtime.generation.sampling import _seen, _shortlist, apply_repetition_penalty, sample_token

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


def _previous_sample_token(logits: np.ndarray, params: SamplingParams, history: list[int],
                           rng: np.random.Generator) -> int:
    """sample_token as it was before the shortlist (2026-12-02): the oracle its draws must equal."""
    scores = apply_repetition_penalty(np.asarray(logits, dtype=np.float64), history, params.repetition_penalty)
    if params.temperature == 0.0:
        return int(np.argmax(scores))
    scores = scores / params.temperature
    ids = None
    if 0 < params.top_k < scores.shape[-1]:
        kth = np.partition(scores, -params.top_k)[-params.top_k]
        ids = np.flatnonzero(scores >= kth)
        scores = scores[ids]
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, params.top_p) + 1)]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    pick = int(rng.choice(probs.shape[-1], p=probs))
    return pick if ids is None else int(ids[pick])


PHASES = [SamplingParams(0.8, 20, 0.85, 1.1), SamplingParams(0.3, 20, 0.85, 1.05), SamplingParams(0.5, 5, 0.85, 1.3),
          SamplingParams(0.0, 0, 1.0, 1.3), SamplingParams(0.0, 0, 1.0, 1.0), SamplingParams(1.0, 50, 1.0, 0.7),
          SamplingParams(2.0, 1, 0.5, 1.0), SamplingParams(0.8, 0, 0.9, 1.1)]


@pytest.mark.parametrize("vocab", [151936, 3000])
def test_shortlisted_draws_equal_the_previous_sampler(vocab: int) -> None:
    """Same ids for the same seed as the whole-vocabulary sampler it replaced, over random logits (float32 as the
    llm gives them, float16, float64 as the audio head's chooser passes them, some rounded to make ties at the
    k-th score, some masked with -inf or peaked), histories from empty to longer than the context, and every
    phase's settings plus greedy, penalties below 1, top-k 1 and no top-k."""
    shortlisted = 0
    for seed in range(30 if vocab > 10000 else 200):
        r = np.random.default_rng(seed)
        logits = (r.standard_normal(vocab) * r.uniform(0.5, 8)).astype([np.float32, np.float16, np.float64][seed % 3])
        if seed % 4 == 1:
            logits = np.round(logits)
        if seed % 5 == 2:
            logits[r.integers(0, vocab, vocab // 3)] = -np.inf
        if seed % 7 == 3:
            logits[r.integers(0, vocab, 3)] += 30
        history = r.integers(-2, vocab + 2, int(r.integers(0, 3000))).tolist()
        if seed % 6 == 0:
            history += np.argsort(logits)[-40:].tolist()  # the best ids were said already: the penalty reorders them
        for params in PHASES:
            want = _previous_sample_token(logits, params, history, np.random.default_rng(seed))
            assert sample_token(logits, params, history, np.random.default_rng(seed)) == want, (seed, params)
        shortlisted += _shortlist(logits, _seen(history, vocab), PHASES[0], 20) is not None
    assert shortlisted >= 10  # the shortlist was taken, not only the whole-vocabulary path
