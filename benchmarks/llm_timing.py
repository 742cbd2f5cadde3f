"""Prefill and decode timing of one decoder: warm-up, then the median of N, at each context length."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bcaudio.benchmarks.decoders import Decoder


@dataclass
class ContextTiming:
    context: int
    prefill_ms: float  # median over the prefill repeats, a fresh cache each time
    decode_ms: float  # median of the timed steps, each at exactly ``context`` past positions
    decode_ms_min: float
    logits: np.ndarray  # of the last prefill position: the cross-variant sanity check

    @property
    def prefill_tok_s(self) -> float:
        return self.context / (self.prefill_ms / 1000)


def _timed(call: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = call()
    return (time.perf_counter() - start) * 1000, out


def time_decoder(decoder: Decoder, ids: np.ndarray, contexts: Sequence[int], iterations: int, warmup: int,
                 prefill_repeats: int, progress: Callable[[str], None]) -> list[ContextTiming]:
    """Per context: ``prefill_repeats`` prefills of ``ids[:context]``, then ``warmup`` + ``iterations`` decode
    steps of the token ``ids[context]``, each followed by a rewind to ``context``, so every timed step does the
    same work."""
    decoder.reset()
    decoder.feed(ids[:8])  # first-run allocations and kernel selection stay out of every figure
    results = []
    for context in contexts:
        prefill = []
        for _ in range(prefill_repeats):
            decoder.reset()
            ms, logits = _timed(lambda c=context: decoder.feed(ids[:c]))
            prefill.append(ms)
        steps = []
        token = ids[context:context + 1]
        for i in range(warmup + iterations):
            ms, _ = _timed(lambda t=token: decoder.feed(t))
            decoder.truncate(context)
            if i >= warmup:
                steps.append(ms)
        timing = ContextTiming(context, statistics.median(prefill), statistics.median(steps), min(steps),
                               np.asarray(logits, np.float32))
        progress(f"  {decoder.name} @ {context}: prefill {timing.prefill_tok_s:.0f} tok/s, "
                 f"decode {timing.decode_ms:.2f} ms/token")
        results.append(timing)
    return results


def teacher_forced_logits(decoder: Decoder, ids: np.ndarray, start: int, steps: int) -> np.ndarray:
    """Prefill ``ids[:start]``, then feed the next ``steps`` ids one at a time; -> (steps, vocab) logits: every
    variant sees the same tokens, so the rows compare position by position (the accuracy figure)."""
    decoder.reset()
    decoder.feed(ids[:start])
    return np.stack([np.asarray(decoder.feed(ids[start + i:start + i + 1]), np.float32) for i in range(steps)])
