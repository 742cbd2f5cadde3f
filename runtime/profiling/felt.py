"""What a person waits in a profiled turn, and what the speaker has queued while it plays.

The profiler runs the model faster or slower than real time, so the turn's surroundings are
simulated on the audio clock, with the live session's own rules: the endpointer and turn detector
replayed on the input (``end_of_turn``) give the utterance the session would have cut and the
frame it would have decided on; the prefill chunks it would have sent while the user spoke are
placed where a worker fed in real time would have run them (late chunks push the rest back, and
what is still running at the decision delays the answer: the backlog); the player starts on its
next output block after the first piece arrives and plays in real time, waiting for the next piece
when its queue runs dry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bcaudio.errors import UserError
from bcaudio.runtime.audio.devices import BLOCK_MS
from bcaudio.runtime.audio.end_of_turn import first_end_of_turn
from bcaudio.runtime.audio.turn_detector import SmartTurn
from bcaudio.runtime.audio.vad import VAD_RATE, EndpointSettings, SileroVad
from bcaudio.runtime.audio.voicing import last_voiced_sample

TRAILING_SILENCE_S = 0.5  # after the hangover, so the endpointer can always decide inside the input


@dataclass
class Heard:
    """The utterance as the live session would cut it; times in seconds, 0 = the end-of-turn decision."""

    audio: np.ndarray  # from the session's utterance start (pre-roll included) to the decision
    voice_end_s: float  # the last voiced sample (negative)
    ended_by: str  # "hangover" or "turn_detector"
    detector_runs: list[tuple[float, float, float]] = field(default_factory=list)  # (start, seconds, probability)

    @property
    def voice_gap_ms(self) -> float:
        return -self.voice_end_s * 1000

    @property
    def start_s(self) -> float:
        return -self.audio.size / VAD_RATE


def hear(audio16k: np.ndarray, vad: SileroVad, settings: EndpointSettings, detector: SmartTurn | None) -> Heard:
    """Cut ``audio16k`` (followed by silence) where the live endpointer and turn detector would end the turn."""
    pad = np.zeros(int((settings.end_ms / 1000 + TRAILING_SILENCE_S) * VAD_RATE), np.float32)
    audio = np.concatenate([np.asarray(audio16k, np.float32).reshape(-1), pad])
    end = first_end_of_turn(audio, vad, settings, detector)
    if end is None:
        raise UserError("the VAD finds no utterance in the input: pass speech (--input speech.wav) with at least "
                        f"{settings.start_ms} ms of voice")
    utterance = audio[end.utterance_start:end.decision]
    voiced = last_voiced_sample(utterance)
    voice_end = (voiced if voiced is not None else utterance.size) - utterance.size
    runs = [((asked - end.decision) / VAD_RATE, s, p)
            for asked, s, p in zip(end.asked, end.detector_seconds, end.probabilities, strict=True)]
    return Heard(utterance, voice_end / VAD_RATE, end.by, runs)


def worker_schedule(available_s: list[float], durations_s: list[float]) -> list[float]:
    """Start of each job on one worker that takes jobs in order, each no earlier than it is available."""
    starts, free = [], -math.inf
    for at, took in zip(available_s, durations_s, strict=True):
        start = max(at, free)
        starts.append(start)
        free = start + took
    return starts


@dataclass
class Playback:
    """The speaker over the turn, ms from the decision: seconds queued ahead of it at each change."""

    start_ms: float  # the first answer sample leaves the player
    points: list[tuple[float, float]]  # (ms, seconds queued), a step line
    min_buffer_s: float | None  # least audio queued when a later piece arrived (None: a single piece)
    underrun_ms: float  # silence while the answer was not finished: the speaker ran dry


def playback(arrivals_ms: list[float], durations_s: list[float], block_ms: float = BLOCK_MS) -> Playback | None:
    """The player fed pieces of ``durations_s`` at ``arrivals_ms``, pulling blocks of ``block_ms`` on a grid."""
    if not arrivals_ms:
        return None

    def next_block(t: float) -> float:
        return math.ceil(t / block_ms - 1e-9) * block_ms

    start = next_block(arrivals_ms[0])
    played_until = start + durations_s[0] * 1000  # when the queued audio runs out
    points = [(start, durations_s[0])]
    least, underrun = None, 0.0
    for at, seconds in zip(arrivals_ms[1:], durations_s[1:], strict=True):
        ahead = (played_until - at) / 1000
        if ahead < 0:  # dry: the piece is played from the next block on
            resume = next_block(at)
            underrun += resume - played_until
            points += [(played_until, 0.0), (resume, 0.0), (resume, seconds)]
            played_until, least = resume + seconds * 1000, 0.0
            continue
        least = ahead if least is None else min(least, ahead)
        points.append((at, ahead))
        played_until += seconds * 1000
        points.append((at, (played_until - at) / 1000))
    points.append((played_until, 0.0))
    return Playback(start, points, least, underrun)
