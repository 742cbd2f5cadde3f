"""The client's loudspeaker as the server sees it: answer audio goes out as deltas, a clock says what was heard.

``LiveSession`` drives a speaker through ``begin_turn`` / ``enqueue`` / ``stop`` / ``busy`` / ``played``
(``runtime/audio/devices.py`` has the local one). A browser plays the deltas from a gapless queue in
real time, starting each as soon as it arrives or when the one before it ends, whichever is later; this
class keeps the same schedule, so at a barge-in the marks whose audio has ended by now are what the user
heard, and the history is cut back to them. A client whose playback falls behind (a stalled audio
thread) has heard less than this says; one that reports its position would be exact, at the cost of a
round trip before every cut.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


class RemoteSpeaker:
    def __init__(self, send: Callable[[np.ndarray], None], rate: int,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """``send(samples)`` ships one piece of the current answer (float32 at ``rate``) to the client."""
        self.send, self.rate, self.source_rate, self.clock = send, rate, rate, clock
        self._lock = threading.Lock()
        self._turn = 0
        self._free_at = 0.0  # when the client's queue runs dry
        self._pending: list[tuple[float, Any]] = []  # (end time, mark) not yet reached
        self._played: list[Any] = []  # marks of the current turn reached
        self._first_pending = False
        self.sent_samples = 0  # of the current turn
        self.on_first_sample: Callable[[], None] | None = None

    def begin_turn(self) -> int:
        with self._lock:
            self._turn += 1
            self._pending, self._played = [], []
            self._first_pending = True
            self.sent_samples = 0
            return self._turn

    def enqueue(self, turn: int, samples: np.ndarray, mark: Any = None, last: bool = False) -> None:
        first = False
        with self._lock:
            if turn != self._turn:
                return
            samples = np.asarray(samples, dtype=np.float32)
            if samples.size:
                self._free_at = max(self.clock(), self._free_at) + samples.size / self.rate
                self.send(samples)  # under the lock: nothing of a stopped turn goes out after stop()
                self.sent_samples += samples.size
                first, self._first_pending = self._first_pending, False
            if mark is not None:
                self._pending.append((self._free_at, mark))
        if first and self.on_first_sample is not None:
            self.on_first_sample()

    def stop(self) -> None:
        """The client stops playing at once (it does so on speech_started or a cancel)."""
        with self._lock:
            self._settle()
            self._pending = []
            self._turn += 1
            self._free_at = min(self._free_at, self.clock())
            self._first_pending = False

    def _settle(self) -> None:
        now = self.clock()
        while self._pending and self._pending[0][0] <= now:
            self._played.append(self._pending.pop(0)[1])

    @property
    def busy(self) -> bool:
        with self._lock:
            return self.clock() < self._free_at

    @property
    def played(self) -> list[Any]:
        with self._lock:
            self._settle()
            return list(self._played)
