"""The numpy sampler against transformers' logits processors (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcaudio.config import SamplingParams
from bcaudio.runtime.sampling import apply_repetition_penalty, sample_token

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
