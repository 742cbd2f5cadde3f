"""The audio head per frame and the cost of a whole audio frame against its real-time budget.

Each 80 ms of answer audio is one audio code frame: one LLM decode step plus the audio head's
depth steps (one per codebook), run through ``OrtBackend.audio_frame`` as the speech loop runs it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from bcaudio.benchmarks.decoders import PackageDecoder

FRAME_BUDGET_MS = 80.0  # one audio code = 1280 samples at 16 kHz (12.5 codes per second)


@dataclass
class FrameCost:
    decode_ms: float
    audio_head_ms: float

    @property
    def full_frame_ms(self) -> float:
        return self.decode_ms + self.audio_head_ms

    @property
    def margin_ms(self) -> float:
        """Budget left per frame; negative: the answer is made slower than it plays."""
        return FRAME_BUDGET_MS - self.full_frame_ms

    @property
    def realtime_factor(self) -> float:
        """Frame cost over frame duration: below 1 is faster than real time."""
        return self.full_frame_ms / FRAME_BUDGET_MS

    def figures(self) -> dict[str, float]:
        return {"decode_ms": self.decode_ms, "audio_head_ms": self.audio_head_ms, "full_frame_ms": self.full_frame_ms,
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
