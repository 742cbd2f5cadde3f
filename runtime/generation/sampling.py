"""Token sampling in numpy, with the same processor order as transformers' generate().

Shared by the torch reference and the ONNX runtime, so "greedy equal token for
token" compares the models, not two samplers. Order: repetition penalty,
temperature, top-k, top-p, then a draw from the seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from bcaudio.config import SamplingParams

SHORTLIST_STRIDE = 16  # _shortlist's sample of the vocabulary: every 16th logit


def _seen(history: Iterable[int], vocab: int) -> np.ndarray:
    seen = np.fromiter(set(history), dtype=np.int64)
    return seen[(seen >= 0) & (seen < vocab)]


def _penalize(scores: np.ndarray, at: np.ndarray, penalty: float) -> np.ndarray:
    """``scores`` with the entries at ``at`` penalized (a copy when there are any)."""
    if at.size == 0:
        return scores
    out = scores.copy()
    vals = out[at]
    out[at] = np.where(vals < 0, vals * penalty, vals / penalty)
    return out


def apply_repetition_penalty(logits: np.ndarray, history: Iterable[int], penalty: float) -> np.ndarray:
    """CTRL-style: divide positive scores of seen tokens by ``penalty``, multiply negative ones."""
    if penalty == 1.0:
        return logits
    return _penalize(logits, _seen(history, logits.shape[-1]), penalty)


def _shortlist(logits: np.ndarray, seen: np.ndarray, params: SamplingParams, k: int
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """The ids (in index order) and float64 scores that the whole-vocabulary path keeps after its top-k (with
    ``k`` 1 and no temperature: those the greedy argmax chooses among), computed on a few hundred candidates;
    None where that cannot be shown, and the caller takes the whole vocabulary.

    Why: at a 151,936-id vocabulary the float64 copies of the whole-vocabulary path (conversion, penalty,
    temperature) are fresh 1.2 MB arrays, paid in page faults on every token, and its partition runs over
    all of them. Here the candidates are every id whose logit reaches ``cut``, the k-th largest of a strided
    sample (so at least k ids reach it), and every seen id (a penalty below 1 raises a score). Any other id's
    logit is below ``cut``, so its score (a float64 division by the temperature, which never reverses an
    order) is at most ``cut``'s: when the candidates' k-th score is above that bound, no other id can reach
    it or tie with it, and the candidates' scores are the very values the whole path computes, so the kept
    ids, their softmax and the draw are the same. Only float16/float32 logits (every llm graph's) are
    shortlisted.
    """
    vocab = logits.shape[-1]
    if logits.dtype not in (np.float16, np.float32) or logits.ndim != 1 or not 0 < k < vocab // SHORTLIST_STRIDE:
        return None
    cut = np.partition(logits[::SHORTLIST_STRIDE], -k)[-k]
    if not (np.isfinite(cut) and np.isfinite(logits.max())):  # NaN or infinities: left to the whole path
        return None
    chosen = logits >= cut
    chosen[seen] = True
    ids = np.flatnonzero(chosen)
    scores = _penalize(logits[ids].astype(np.float64), np.searchsorted(ids, seen), params.repetition_penalty)
    bound = np.float64(cut)
    if params.temperature != 0.0:
        scores, bound = scores / params.temperature, bound / params.temperature
    kth = np.partition(scores, -k)[-k]
    if not kth > bound:
        return None
    keep = scores >= kth
    return ids[keep], scores[keep]


def sample_token(logits: np.ndarray, params: SamplingParams, history: Iterable[int],
                 rng: np.random.Generator) -> int:
    """One token id from 1-D ``logits`` (float); temperature 0 is greedy.

    With top-k, only the k candidates (in index order) go through softmax, top-p and the draw:
    a 151k vocabulary costs a fraction of a full softmax (docs/benchmarks.md), with the same distribution and,
    since zero-probability entries do not move ``rng.choice``'s cumulative sum, the same draw. The candidates
    come from a shortlist of the vocabulary (``_shortlist``) wherever it can show they are the same.
    """
    logits = np.asarray(logits)
    greedy = params.temperature == 0.0
    seen = _seen(history, logits.shape[-1]) if params.repetition_penalty != 1.0 else np.zeros(0, np.int64)
    short = _shortlist(logits, seen, params, 1 if greedy else params.top_k)
    if short is not None:
        ids, scores = short
    else:
        ids = None
        scores = _penalize(np.asarray(logits, dtype=np.float64), seen, params.repetition_penalty)
        if not greedy:
            scores = scores / params.temperature
            if 0 < params.top_k < scores.shape[-1]:
                kth = np.partition(scores, -params.top_k)[-params.top_k]
                ids = np.flatnonzero(scores >= kth)  # ties with the k-th score stay, as in transformers
                scores = scores[ids]
    if greedy:
        best = int(np.argmax(scores))
        return best if ids is None else int(ids[best])
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
