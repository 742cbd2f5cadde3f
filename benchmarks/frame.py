"""The audio head per frame and the cost of a whole audio frame against its real-time budget.

Each 80 ms of answer audio is one audio code frame: one LLM step on the frame's ``<audio_pad>``
position (its codes summed in, the logits not read, so a graph with ``with_logits`` skips the lm_head,
as the speech loop feeds it) plus the audio head's depth steps (one per codebook), run through
``OrtBackend.audio_frame`` as the speech loop runs it. The text decode step of the LLM table reads the
logits; a frame's does not, so the frame is timed on its own step.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bcaudio.benchmarks.decoders import PackageDecoder

FRAME_BUDGET_MS = 80.0  # one audio code = 1280 samples at 16 kHz (12.5 codes per second)


@dataclass
class FrameCost:
    llm_ms: float  # the frame position's LLM step, logits not read
    audio_head_ms: float

    @property
    def full_frame_ms(self) -> float:
        return self.llm_ms + self.audio_head_ms

    @property
    def margin_ms(self) -> float:
        """Budget left per frame; negative: the answer is made slower than it plays."""
        return FRAME_BUDGET_MS - self.full_frame_ms

    @property
    def realtime_factor(self) -> float:
        """Frame cost over frame duration: below 1 is faster than real time."""
        return self.full_frame_ms / FRAME_BUDGET_MS

    def figures(self) -> dict[str, float]:
        return {"llm_ms": self.llm_ms, "audio_head_ms": self.audio_head_ms, "full_frame_ms": self.full_frame_ms,
                "margin_ms": self.margin_ms, "realtime_factor": self.realtime_factor}


def audio_head_ms(decoder: PackageDecoder, iterations: int, warmup: int) -> float:
    """Median ms of one frame of the package's audio head (greedy codes), on the decoder's last hidden state."""
    def greedy(_position: int, logits: np.ndarray) -> int:
        return int(np.argmax(logits))

    times = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        decoder.backend.audio_frame(decoder.hidden, greedy)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def frame_llm_ms(decoder: PackageDecoder, ids: np.ndarray, contexts: Sequence[int], iterations: int,
                 warmup: int, seed: int = 0) -> dict[int, float]:
    """Median ms of a frame's LLM step at each context: ``ids[:context]`` prefilled once, then ``warmup`` +
    ``iterations`` steps of one ``<audio_pad>`` position with random codes and ``logits=False``, each rewound to
    ``context`` (as ``time_decoder`` does for text steps)."""
    llm, cfg = decoder.llm, decoder.sessions.cfg
    codes = np.random.default_rng(seed).integers(0, cfg.bridge.codebook_sizes, dtype=np.int64)[None]
    pad = [cfg.tokens.audio_pad]
    out = {}
    for context in contexts:
        decoder.reset()
        decoder.feed(ids[:context])
        times = []
        for i in range(warmup + iterations):
            start = time.perf_counter()
            llm.feed(pad, codes, logits=False)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
            llm.truncate(context)
        out[context] = statistics.median(times)
    return out
