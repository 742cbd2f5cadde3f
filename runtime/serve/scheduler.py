"""Every model step of every connection runs on one compute thread, taken in turn.

A connection's worker never runs a graph itself: each ONNX Runtime run (an LLM feed, one audio-head
step, one flow step, the vocoder, a tokenizer window) is a job handed to ``ComputeScheduler`` through
the connection's ``Lane``, and the worker waits for its result. A worker has at most one job waiting,
so the first-in-first-out queue is a round robin over the active turns: with N turns generating, each
gets every N-th step, and a step's intra-op threads have the cores to themselves (two graphs running
at once on a small CPU only fight over its cores).

Closing a lane (a client that disconnected) drops its waiting job and makes its next one fail at once
with ``LaneClosed``: the turn stops within the step already running. This queue is the one place where
sessions' steps meet, so batching steps of several sessions into one run can replace ``_next``.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class LaneClosed(RuntimeError):
    """The connection this work belonged to is gone."""


@dataclass
class _Job:
    lane: Lane
    graph: str
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class ComputeScheduler:
    """One compute thread; jobs run in arrival order, one at a time."""

    def __init__(self) -> None:
        self._queue: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._stopped = False
        self.jobs_run = 0
        self._thread = threading.Thread(target=self._run, name="bcaudio-compute", daemon=True)
        self._thread.start()

    def lane(self) -> Lane:
        """A new connection's way in."""
        return Lane(self, next(self._ids))

    @property
    def waiting(self) -> int:
        with self._cv:
            return len(self._queue)

    def submit(self, job: _Job) -> Any:
        with self._cv:
            if job.lane.closed or self._stopped:
                raise LaneClosed(f"lane {job.lane.id} is closed")
            self._queue.append(job)
            self._cv.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def drop(self, lane: Lane) -> None:
        """Fail the lane's waiting jobs now (their workers get ``LaneClosed``)."""
        with self._cv:
            dropped = [j for j in self._queue if j.lane is lane]
            self._queue = deque(j for j in self._queue if j.lane is not lane)
        for job in dropped:
            job.error = LaneClosed(f"lane {lane.id} is closed")
            job.done.set()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            pending, self._queue = list(self._queue), deque()
            self._cv.notify()
        for job in pending:
            job.error = LaneClosed("the scheduler stopped")
            job.done.set()
        self._thread.join(timeout=10)

    def _next(self) -> _Job | None:
        with self._cv:
            while not self._queue and not self._stopped:
                self._cv.wait()
            return None if self._stopped else self._queue.popleft()

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                job.result = job.fn()
            except BaseException as exc:  # handed to the waiting worker, which owns the turn
                job.error = exc
            job.lane.steps += 1
            self.jobs_run += 1
            job.done.set()


class Lane:
    """One connection's handle on the scheduler."""

    def __init__(self, scheduler: ComputeScheduler, lane_id: int) -> None:
        self.scheduler, self.id = scheduler, lane_id
        self.closed = False
        self.steps = 0  # jobs run for this lane: how tests see that a closed lane's work stopped

    def run(self, graph: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (an ORT run of ``graph``) on the compute thread when this lane's turn comes."""
        return self.scheduler.submit(_Job(self, graph, fn))

    def close(self) -> None:
        self.closed = True
        self.scheduler.drop(self)


class LanedOrtSession:
    """An InferenceSession whose runs go through a lane; everything else (inputs, outputs, binding) is the
    shared session's."""

    def __init__(self, session: Any, graph: str, lane: Lane) -> None:
        self._session, self._graph, self._lane = session, graph, lane

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, outputs: Sequence[str] | None, feeds: dict[str, np.ndarray], options: Any = None) -> list:
        return self._lane.run(self._graph, lambda: self._session.run(outputs, feeds, options))

    def run_with_iobinding(self, binding: Any) -> None:
        self._lane.run(self._graph, lambda: self._session.run_with_iobinding(binding))


class LanedSessions:
    """A connection's view of the shared ``PackageSessions``: the same sessions, every run through its lane."""

    def __init__(self, sessions: Any, lane: Lane) -> None:
        self._sessions, self.lane = sessions, lane
        self._laned = {name: LanedOrtSession(s, name, lane) for name, s in sessions.sessions.items()}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sessions, name)

    def __getitem__(self, name: str) -> LanedOrtSession:
        return self._laned[name]

    def run(self, name: str, feeds: dict, outputs: Sequence[str] | None = None, options: Any = None) -> list:
        return self._laned[name].run(outputs, feeds, options)
