"""Token sampling in numpy, with the same processor order as transformers' generate().

Shared by the torch reference and the ONNX runtime, so "greedy equal token for
token" compares the models, not two samplers. Order: repetition penalty,
temperature, top-k, top-p, then a draw from the seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from bcaudio.config import SamplingParams


def apply_repetition_penalty(logits: np.ndarray, history: Iterable[int], penalty: float) -> np.ndarray:
    """CTRL-style: divide positive scores of seen tokens by ``penalty``, multiply negative ones."""
    if penalty == 1.0:
        return logits
    seen = np.fromiter(set(history), dtype=np.int64)
    seen = seen[(seen >= 0) & (seen < logits.shape[-1])]
    if seen.size == 0:
        return logits
    out = logits.copy()
    vals = out[seen]
    out[seen] = np.where(vals < 0, vals * penalty, vals / penalty)
    return out


def sample_token(logits: np.ndarray, params: SamplingParams, history: Iterable[int],
                 rng: np.random.Generator) -> int:
    """One token id from 1-D ``logits`` (float); temperature 0 is greedy.

    With top-k, only the k candidates (in index order) go through softmax, top-p and the draw:
    a 151k vocabulary costs a fraction of a full softmax (docs/benchmarks.md), with the same distribution and,
    since zero-probability entries do not move ``rng.choice``'s cumulative sum, the same draw.
    """
    scores = apply_repetition_penalty(np.asarray(logits, dtype=np.float64), history, params.repetition_penalty)
    if params.temperature == 0.0:
        return int(np.argmax(scores))
    scores = scores / params.temperature
    ids = None
    if 0 < params.top_k < scores.shape[-1]:
        kth = np.partition(scores, -params.top_k)[-params.top_k]
        ids = np.flatnonzero(scores >= kth)  # ties with the k-th score stay, as in transformers
        scores = scores[ids]
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (always at least the best token)
        keep = order[: int(np.searchsorted(cum, params.top_p) + 1)]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    pick = int(rng.choice(probs.shape[-1], p=probs))
    return pick if ids is None else int(ids[pick])
