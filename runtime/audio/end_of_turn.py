"""Where a recorded utterance's end of turn is decided, exactly as the live session decides it.

The live listener runs the VAD per 32 ms frame; at a short pause it hands the utterance to the
turn detector on another thread and applies a "finished" verdict at the first frame after the
verdict arrived, unless speech resumed; otherwise the hangover ends the utterance. This replays
that on a recording (the profiler's input, the turn-detector table's utterances), with the
detector's real run time deciding the frame its verdict lands on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from bcaudio.runtime.audio.turn_detector import SmartTurn
from bcaudio.runtime.audio.vad import FRAME, FRAME_MS, Endpointer, EndpointSettings, SileroVad


@dataclass
class EndOfTurn:
    """Sample positions in the recording; ``by`` is ``"hangover"`` or ``"turn_detector"``."""

    utterance_start: int  # where the live session's utterance begins (its pre-roll included)
    decision: int  # end of the frame on which the end of the utterance was decided
    by: str
    asked: list[int] = field(default_factory=list)  # end of each frame at which the detector was asked
    probabilities: list[float] = field(default_factory=list)
    detector_seconds: list[float] = field(default_factory=list)  # compute time of each detector run


def pre_roll_frames(settings: EndpointSettings) -> int:
    """Frames of audio the live session keeps before the start decision (the frame that decided included)."""
    return max(settings.frames(settings.pre_roll_ms), settings.frames(settings.start_ms))


def first_end_of_turn(audio16k: np.ndarray, vad: SileroVad, settings: EndpointSettings,
                      detector: SmartTurn | None = None) -> EndOfTurn | None:
    """The first utterance's end of turn in ``audio16k`` (None when no utterance ends inside it)."""
    audio = np.asarray(audio16k, dtype=np.float32).reshape(-1)
    endpointer = Endpointer(settings)
    use_detector = settings.turn_detector and detector is not None
    vad.reset()
    start: int | None = None
    result: EndOfTurn | None = None
    pending: int | None = None  # frame from which a "finished" verdict applies
    for i in range(audio.size // FRAME):
        change = endpointer.update(vad.frame(audio[i * FRAME:(i + 1) * FRAME]))
        end = (i + 1) * FRAME
        if change == "start":
            start = max(0, end - pre_roll_frames(settings) * FRAME)
            result = EndOfTurn(start, 0, "")
        if result is None or start is None:
            continue
        if pending is not None and not endpointer.pausing:
            pending = None  # speech resumed before the verdict landed
        if pending is not None and i >= pending:
            endpointer.finish()
            result.decision, result.by = end, "turn_detector"
            return result
        if change == "pause" and use_detector:
            t0 = time.perf_counter()
            prob = detector.probability(audio[start:end])
            seconds = time.perf_counter() - t0
            result.asked.append(end)
            result.probabilities.append(prob)
            result.detector_seconds.append(seconds)
            if prob > settings.turn_threshold:
                pending = i + max(1, math.ceil(seconds * 1000 / FRAME_MS))
        elif change == "end":
            result.decision, result.by = end, "hangover"
            return result
    return None
