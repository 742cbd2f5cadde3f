"""Every model step of every connection runs on one of two compute threads, taken in turn.

A connection's worker never runs a graph itself: each ONNX Runtime run (an LLM feed, one audio-head
step, one flow step, the vocoder, a tokenizer window) is a job handed to ``ComputeScheduler`` through
the connection's ``Lane``, and the worker waits for its result. The decode graphs (flow pre-net, flow
estimator, vocoder) have a thread and queue of their own, everything else (llm, audio head, tokenizer,
batched runs) the other: so a connection's streamed window is decoded beside the next frames, as the
speech loop's decode worker does in ``bcaudio chat`` (on 2 cores the frames alone keep about one core
busy: docs/benchmarks.md, "Session 9"), and at most two graphs run at once. Each queue is first in,
first out, and a connection's thread has at most one job waiting in it, so each is a round robin over
the active turns: with N turns generating, each gets every N-th step.

Closing a lane (a client that disconnected) drops its waiting jobs and makes its next one fail at once
with ``LaneClosed``: the turn stops within the steps already running. These queues are the one place
where sessions' steps meet, so batched runs of several sessions' steps come through the steps queue.
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


DECODE_GRAPHS = frozenset({"flow_prenet", "flow_estimator", "vocoder"})  # their own thread and queue


class ComputeScheduler:
    """Two compute threads, one for the decode graphs and one for the rest; each runs its jobs in arrival
    order, one at a time."""

    def __init__(self) -> None:
        self._queues: dict[bool, deque[_Job]] = {False: deque(), True: deque()}  # keyed by "is a decode graph"
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._stopped = False
        self.jobs_run = 0
        self._threads = [threading.Thread(target=self._run, args=(decode,), name=name, daemon=True)
                         for decode, name in ((False, "bcaudio-compute"), (True, "bcaudio-compute-decode"))]
        for thread in self._threads:
            thread.start()

    def lane(self) -> Lane:
        """A new connection's way in."""
        return Lane(self, next(self._ids))

    @property
    def waiting(self) -> int:
        with self._cv:
            return sum(len(q) for q in self._queues.values())

    def submit(self, job: _Job) -> Any:
        with self._cv:
            if job.lane.closed or self._stopped:
                raise LaneClosed(f"lane {job.lane.id} is closed")
            self._queues[job.graph in DECODE_GRAPHS].append(job)
            self._cv.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def drop(self, lane: Lane) -> None:
        """Fail the lane's waiting jobs now (their workers get ``LaneClosed``)."""
        with self._cv:
            dropped = [j for q in self._queues.values() for j in q if j.lane is lane]
            for key, q in self._queues.items():
                self._queues[key] = deque(j for j in q if j.lane is not lane)
        for job in dropped:
            job.error = LaneClosed(f"lane {lane.id} is closed")
            job.done.set()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            pending = [j for q in self._queues.values() for j in q]
            for q in self._queues.values():
                q.clear()
            self._cv.notify_all()
        for job in pending:
            job.error = LaneClosed("the scheduler stopped")
            job.done.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _next(self, decode: bool) -> _Job | None:
        with self._cv:
            while not self._queues[decode] and not self._stopped:
                self._cv.wait()
            return None if self._stopped else self._queues[decode].popleft()

    def _run(self, decode: bool) -> None:
        while (job := self._next(decode)) is not None:
            try:
                job.result = job.fn()
            except BaseException as exc:  # handed to the waiting worker, which owns the turn
                job.error = exc
            with self._cv:  # two threads count
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
