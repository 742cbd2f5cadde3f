"""Continuous batching: the LLM and audio-head steps of every active conversation run as one batch.

A box serving several conversations would otherwise run each one's decode step on its own,
streaming every weight once per conversation; on a bandwidth-bound CPU a batch of four costs
little more than one. ``BatchScheduler`` owns one package's llm and audio-head sessions and a
rows-per-conversation KV cache (``LlmRows``); each conversation gets a ``BatchedBackend`` (the
``Backend`` of ``SpeechLoop``) and runs its loop on its own thread. A feed or an audio frame
posts a request and waits; the scheduler's thread gathers the requests of all conversations,
runs them as one batch, and answers each. Conversations join (``backend``) and leave
(``BatchedBackend.close``) between steps; each keeps its own cache row, positions, sampler and
noise, so it produces the same tokens as when run alone (greedy; tests/test_batching.py).

Gathering: after the first request of a step, the scheduler waits until every conversation that
is mid-turn has posted, at most ``gather_ms``. A conversation decoding audio (flow + vocoder,
not batched) on its loop's own thread is away and not waited for; one decoding on its loop's decode
worker (the overlapped streaming schedule, as on ``OrtBackend``: ``cancel_decode``) goes on
stepping beside it and is waited for as usual; one that missed a step
(between turns) is not waited for again until it posts. Single-position feeds of all rows
are one batched llm run; longer feeds (prefill) run on their row alone; frames of all rows are
8 batched head runs (one per codebook; each conversation's sampler picks its code in between).

A server makes one ``BatchScheduler`` per loaded package and one ``VoiceAssistant(package,
scheduler=..., sessions=...)`` per conversation (runtime/serve/model.py): ``run_batch`` puts each
batched run on the server's compute queue, and a conversation's own runs (tokenizer, flow,
vocoder) go through its own ``sessions``. Rows are joined, moved and freed only between batched
runs (``_step_lock``), so a conversation may leave from any thread (a client that disconnects):
its waiting request fails at once with ``LeftBatch``, and its row is freed as soon as the run in
flight, if any, ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from bcaudio.runtime.generation.noise import NoiseSource
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.speech_loop import ChooseCode
from bcaudio.runtime.package.llm_rows import LlmRows, Row, StepInput
from bcaudio.runtime.package.llm_state import DEFAULT_KV_CAPACITY
from bcaudio.runtime.package.ort_backend import decode_window, tokenize_audio
from bcaudio.runtime.package.sessions import PackageSessions

DEFAULT_GATHER_MS = 10.0

RunBatch = Callable[[Callable[[], list]], list]


class LeftBatch(RuntimeError):
    """The conversation left the batch (it was closed) while or before it asked for a step."""

# a member's state, as the scheduler sees it: awaited when "stepping"
STEPPING, POSTED, AWAY, LATE = "stepping", "posted", "away", "late"


@dataclass(eq=False)
class _Request:
    member: _Member
    kind: str  # "feed" or "frame"
    ids: Sequence[int] = ()
    codes: np.ndarray | None = None
    logits: bool = True
    hidden: np.ndarray | None = None
    choose: ChooseCode | None = None
    result: object = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class _Member:
    row: Row
    state: str = STEPPING
    closed: bool = False
    stepper: int | None = None  # the thread that posts its steps (its SpeechLoop's)


@dataclass
class BatchStats:
    """What the scheduler ran: llm steps and head frames by batch size (for benchmarks and tests)."""

    llm_batches: dict[int, int] = field(default_factory=dict)
    head_batches: dict[int, int] = field(default_factory=dict)
    prefills: int = 0

    def add(self, table: dict[int, int], size: int) -> None:
        table[size] = table.get(size, 0) + 1


class BatchScheduler:
    """One package's decode-loop graphs shared by many conversations, stepped together on one thread."""

    def __init__(self, sessions: PackageSessions, gather_ms: float = DEFAULT_GATHER_MS,
                 kv_capacity: int = DEFAULT_KV_CAPACITY, run_batch: RunBatch | None = None) -> None:
        """``run_batch(fn)`` runs one batched graph run ``fn`` where the host wants it (a server's compute queue);
        by default on the scheduler's own thread."""
        if sessions.device != "cpu":
            raise ValueError("batched decoding runs on the CPU execution provider")
        self.sessions, self.cfg = sessions, sessions.cfg
        self.gather_s = gather_ms / 1000
        c = self.cfg.llm
        self.rows = LlmRows(sessions["llm"], c.kv_heads, c.head_dim, self.cfg.bridge.num_codebooks, kv_capacity,
                            c.max_position_embeddings, observe=lambda s, e: sessions.notify("llm", s, e))
        self.head_past_names = [i.name for i in sessions["audio_head"].get_inputs() if i.name.startswith("past_")]
        self.stats = BatchStats()
        self._run_batch = run_batch or (lambda fn: fn())
        self._step_lock = threading.Lock()  # held while a batched run is in flight: rows move only outside it
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._members: list[_Member] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="bcaudio-batch", daemon=True)
        self._thread.start()

    def backend(self, seed: int = 0, flow_steps: int | None = None,
                sessions: PackageSessions | None = None) -> BatchedBackend:
        """A new conversation's backend (it joins at the next step); ``sessions`` run its own graphs (tokenizer,
        flow, vocoder), by default the scheduler's."""
        with self._step_lock, self._cond:
            member = _Member(self.rows.join())
            self._members.append(member)
        return BatchedBackend(self, member, seed, flow_steps, sessions or self.sessions)

    def close(self) -> None:
        """Stop the scheduler's thread once the requests already posted are answered."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- called from conversations' threads -----

    def _call(self, request: _Request) -> object:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the batch scheduler is closed")
            if request.member.closed:
                raise LeftBatch("this conversation has left the batch")
            request.member.state = POSTED
            request.member.stepper = threading.get_ident()
            self._pending.append(request)
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    @contextmanager
    def _away(self, member: _Member) -> Iterator[None]:
        """``member`` runs a graph of its own (tokenizer, flow, vocoder): not waited for meanwhile, if the thread
        running it is the one that posts its steps. A decode on another thread (the speech loop's decode worker,
        beside the frames) leaves the state alone: the stepping thread goes on posting, and marking it away, or
        back to stepping when the decode ends while a step is posted, would make the gather skip it or wait
        ``gather_ms`` for a step that is already there."""
        mine = member.stepper in (None, threading.get_ident())
        if mine:
            with self._cond:
                member.state = AWAY
                self._cond.notify_all()
        try:
            yield
        finally:
            if mine:
                with self._cond:
                    member.state = STEPPING
                    self._cond.notify_all()

    def _leave(self, member: _Member) -> None:
        """Stop stepping ``member`` now (its waiting request fails), free its row once no batched run is in
        flight."""
        with self._cond:
            if member.closed:
                return
            member.closed = True
            dropped = [r for r in self._pending if r.member is member]
            self._pending = [r for r in self._pending if r.member is not member]
            self._members.remove(member)
            self._cond.notify_all()
        for r in dropped:
            r.error = LeftBatch("this conversation has left the batch")
            r.done.set()
        with self._step_lock:
            self.rows.leave(member.row)

    def _truncate(self, member: _Member, position: int) -> None:
        with self._step_lock:
            self.rows.truncate(member.row, position)

    def summary(self) -> dict[str, int]:
        """Conversations in the batch now, and the largest llm and head batches run so far (for /healthz)."""
        with self._cond:
            return {"conversations": len(self._members), "largest_llm_batch": max(self.stats.llm_batches, default=0),
                    "largest_head_batch": max(self.stats.head_batches, default=0)}

    # ----- the scheduler's thread -----

    def _gather(self) -> list[_Request] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:
                return None
            deadline = time.perf_counter() + self.gather_s
            while any(m.state == STEPPING for m in self._members):
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            for m in self._members:
                if m.state == STEPPING:
                    m.state = LATE  # not waited for again until it posts
            batch, self._pending = self._pending, []
            return batch

    def _serve(self) -> None:
        while (batch := self._gather()) is not None:
            with self._step_lock:
                self._step(batch)
            with self._cond:
                for r in batch:
                    if r.member.state == POSTED:
                        r.member.state = STEPPING  # it will post its next step shortly
            for r in batch:
                r.done.set()

    def _step(self, batch: list[_Request]) -> None:
        """The gathered requests: each prefill alone, the single-position feeds as one run, the frames as one."""
        feeds = [r for r in batch if r.kind == "feed"]
        for r in [r for r in feeds if len(r.ids) != 1]:
            self._guard([r], lambda r=r: [self.rows.feed(r.member.row, r.ids, r.codes, r.logits)])
            self.stats.prefills += 1
        steps = [r for r in feeds if len(r.ids) == 1]
        if steps:
            self.stats.add(self.stats.llm_batches, len(steps))
            inputs = [StepInput(r.member.row, int(r.ids[0]), r.codes, r.logits) for r in steps]
            self._guard(steps, lambda inputs=inputs: self.rows.step(inputs))
        frames = [r for r in batch if r.kind == "frame"]
        if frames:
            self.stats.add(self.stats.head_batches, len(frames))
            self._guard(frames, lambda frames=frames: self._frames(frames))

    def _guard(self, requests: list[_Request], run: Callable[[], list]) -> None:
        try:
            for r, result in zip(requests, self._run_batch(run), strict=True):
                r.result = result
        except Exception as exc:  # noqa: BLE001 - handed to the waiting conversations, which raise it
            for r in requests:
                r.error = exc

    def _frames(self, requests: list[_Request]) -> list[list[int]]:
        """8 batched head runs; between them each conversation's sampler picks its row's code."""
        n, k = len(requests), self.cfg.bridge.num_codebooks
        h = np.stack([np.asarray(r.hidden, np.float32) for r in requests])
        running = np.zeros_like(h)
        prev = np.zeros(n, np.int64)
        past = {name: np.zeros((n, self.cfg.audio_head_heads, 0, self.cfg.audio_head.head_dim), np.float32)
                for name in self.head_past_names}
        codes = [[] for _ in requests]
        for pos in range(k):
            logits, running, *presents = self.sessions.run("audio_head", {
                "hidden": h, "running": running, "prev_code": prev, "position": np.array([pos], np.int64), **past})
            past = dict(zip(self.head_past_names, presents, strict=True))
            for b, r in enumerate(requests):
                codes[b].append(r.choose(pos, logits[b]))
            prev = np.array([c[-1] for c in codes], np.int64)
        return codes


class BatchedBackend:
    """One conversation on a ``BatchScheduler``: the ``Backend`` its ``SpeechLoop`` drives, from its own thread."""

    def __init__(self, scheduler: BatchScheduler, member: _Member, seed: int, flow_steps: int | None,
                 sessions: PackageSessions) -> None:
        self.scheduler, self.member, self.cfg, self.sessions = scheduler, member, scheduler.cfg, sessions
        self.noise = NoiseSource(self.cfg, seed)
        self.flow_steps = flow_steps or self.cfg.flow.diffusion_steps
        self._decode_options = ort.RunOptions()

    @property
    def position(self) -> int:
        return self.member.row.position

    @property
    def past(self) -> dict[str, np.ndarray]:
        """The valid part of this conversation's KV cache (for tests and debugging)."""
        return self.scheduler.rows.cache(self.member.row)

    def feed(self, ids: Sequence[int], codes: np.ndarray | None = None, logits: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray]:
        return self.scheduler._call(_Request(self.member, "feed", ids=list(ids), codes=codes, logits=logits))

    def audio_frame(self, hidden: np.ndarray, choose: ChooseCode) -> list[int]:
        return self.scheduler._call(_Request(self.member, "frame", hidden=hidden, choose=choose))

    def reset(self) -> None:
        self.truncate(0)

    def truncate(self, position: int) -> None:
        self.scheduler._truncate(self.member, position)

    def tokenize(self, audio16k: np.ndarray) -> np.ndarray:
        """The audio tokenizer on this conversation's thread (not batched); as ``decode_segment``, the scheduler
        does not wait for it."""
        with self.scheduler._away(self.member):
            return tokenize_audio(self.sessions, audio16k)

    def decode_segment(self, codes: np.ndarray, segment: int, first_code: int = 0,
                       phase: SourcePhase | None = None, flow_steps: int | None = None) -> np.ndarray:
        """Flow and vocoder on this conversation's thread (not batched); the scheduler does not wait for it."""
        with self.scheduler._away(self.member):
            return decode_window(self.sessions, self.noise, flow_steps or self.flow_steps, codes, segment,
                                 first_code, phase, self._decode_options)

    def cancel_decode(self) -> None:
        """Stop a decode running on the speech loop's decode worker at its next graph node (a barge-in); as
        ``OrtBackend.cancel_decode``, and what lets the loop decode beside this conversation's batched steps."""
        options, self._decode_options = self._decode_options, ort.RunOptions()
        options.terminate = True

    def close(self) -> None:
        """Leave the batch, from any thread: a waiting step fails with ``LeftBatch``, the row is freed between
        batched runs."""
        self.scheduler._leave(self.member)
