"""Continuous batching across conversations (runtime/generation/batching.py) on the tiny package.

The contract: a conversation stepped in a batch with others produces exactly the tokens (text ids
and every code of every frame) it produces alone, while others join and leave mid-turn, and the
batches really held several conversations.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bcaudio.export.checkpoint import init_checkpoint
from bcaudio.export.package import export_package
from bcaudio.presets import get_preset
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.batching import BatchScheduler
from bcaudio.runtime.generation.speech_loop import AudioSegment, collect
from bcaudio.runtime.package.llm_rows import LlmRows, StepInput
from bcaudio.runtime.package.llm_state import LlmState
from bcaudio.runtime.package.sessions import PackageSessions, SessionSettings


@pytest.fixture(scope="module")
def pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching")
    ckpt = init_checkpoint(get_preset("tiny"), root / "ckpt", seed=1)
    export_package(ckpt, root / "pkg", progress=lambda _: None)
    return root / "pkg"


def _tokens(result: object) -> tuple[list[int], list[list[list[int]]]]:
    return result.text_ids, [s.codes.tolist() for s in result.segments]


def _greedy(pkg: Path) -> object:
    return PackageSessions(pkg, graphs=("llm",), log=lambda _: None).cfg.generation.greedy()


def test_rows_equal_one_conversation_at_a_time(pkg: Path) -> None:
    """Batched single-position steps over rows of different lengths (with an idle row between them, and a row
    moved by packing) give each row the logits and cache that LlmState gives that conversation alone."""
    sessions = PackageSessions(pkg, graphs=("llm",), log=lambda _: None)
    c, k = sessions.cfg.llm, sessions.cfg.bridge.num_codebooks
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 1000, n).tolist() for n in (5, 17, 9, 300)]  # the last one grows the buffer
    rows = LlmRows(sessions["llm"], c.kv_heads, c.head_dim, k, kv_capacity=16)
    alone = [LlmState(sessions["llm"], c.kv_heads, c.head_dim, k, kv_capacity=16) for _ in prompts]
    handles = [rows.join() for _ in prompts]
    for h, s, p in zip(handles, alone, prompts, strict=True):
        got, want = rows.feed(h, p), s.feed(p)
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    rows.leave(handles[0])  # the last row moves into row 0
    assert handles[3].index == 0 and [r.index for r in rows.rows] == [0, 1, 2]
    live = [(handles[i], alone[i]) for i in (1, 2, 3)]
    pad = sessions.cfg.tokens.audio_pad
    for step in range(6):
        active = live if step % 2 == 0 else [live[0], live[2]]  # odd steps leave a row idle inside the span
        audio = step % 3 == 0  # audio frames carry their codes
        tokens = [pad] * len(active) if audio else rng.integers(0, 1000, len(active)).tolist()
        codes = rng.integers(0, 16, (len(active), k))
        got = rows.step([StepInput(h, t, cd if audio else None)
                         for (h, _), t, cd in zip(active, tokens, codes, strict=True)])
        for (_, s), t, cd, (logits, hidden) in zip(active, tokens, codes, got, strict=True):
            want_logits, want_hidden = s.feed([t], cd[None] if audio else None)
            np.testing.assert_allclose(logits, want_logits, atol=1e-5)
            np.testing.assert_allclose(hidden, want_hidden, atol=1e-5)
    for h, s in live:
        assert h.position == s.position
        for name, value in rows.cache(h).items():
            np.testing.assert_allclose(value, s.cache()[name], atol=1e-5)


def test_batched_conversations_equal_each_one_alone(pkg: Path, speech_16k: np.ndarray) -> None:
    """Three conversations, each a greedy voice turn; the second joins while the first is mid-turn and leaves
    before the third joins mid-turn of the first: every one equals the same conversation run alone."""
    greedy = _greedy(pkg)
    alone = []
    for seed in (0, 1, 2):
        a = VoiceAssistant(pkg, None, generation=greedy, seed=seed, log=lambda _: None)
        alone.append(_tokens(collect(a.respond(speech_16k[: 16000 * (2 + seed)], 16000), 240)))
    sessions = PackageSessions(pkg, SessionSettings(intra_op_threads=1), log=lambda _: None)
    results: dict[int, object] = {}
    with BatchScheduler(sessions) as scheduler:
        started = {i: threading.Event() for i in range(3)}
        first_frames = threading.Event()

        def run(i: int, wait_for: threading.Event | None) -> None:
            if wait_for is not None:
                wait_for.wait(60)
            a = VoiceAssistant(pkg, None, generation=greedy, seed=i, log=lambda _: None, scheduler=scheduler)
            started[i].set()
            events = []
            for event in a.respond(speech_16k[: 16000 * (2 + i)], 16000):
                events.append(event)
                if i == 0 and isinstance(event, AudioSegment):
                    first_frames.set()
            a.close()
            results[i] = collect(iter(events), 240)

        threads = [threading.Thread(target=run, args=(0, None)),
                   threading.Thread(target=run, args=(1, started[0])),
                   threading.Thread(target=run, args=(2, first_frames))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        stats = scheduler.stats
    assert sorted(results) == [0, 1, 2]
    for i in range(3):
        assert _tokens(results[i]) == alone[i], f"conversation {i} differs from its run alone"
    assert max(stats.llm_batches) >= 2 and max(stats.head_batches) >= 2  # steps really were shared
    assert not scheduler.rows.rows  # every conversation left: its row is free


def test_leaving_from_another_thread_fails_the_waiting_step_at_once(pkg: Path) -> None:
    """A conversation closed from another thread (a client that disconnected) while a batched run is in flight:
    its waiting step fails with ``LeftBatch`` at once, its row is freed when that run ends, and the other
    conversation's step completes."""
    from bcaudio.runtime.generation.batching import LeftBatch

    sessions = PackageSessions(pkg, graphs=("llm", "audio_head"), log=lambda _: None)
    release, running = threading.Event(), threading.Event()

    def held(fn):  # the host's queue: the first batched run waits for the test
        running.set()
        release.wait(30)
        return fn()

    with BatchScheduler(sessions, run_batch=held) as scheduler:
        staying, leaving = scheduler.backend(), scheduler.backend()
        outcome: dict[str, object] = {}

        def feed(name: str, backend: object) -> None:
            try:
                outcome[name] = backend.feed([1, 2, 3])
            except LeftBatch as exc:
                outcome[name] = exc

        first = threading.Thread(target=feed, args=("staying", staying))
        first.start()
        assert running.wait(30)  # staying's prefill is in flight
        second = threading.Thread(target=feed, args=("leaving", leaving))
        second.start()
        deadline = time.monotonic() + 10
        while not scheduler._pending and time.monotonic() < deadline:
            time.sleep(0.005)
        closer = threading.Thread(target=leaving.close)
        closer.start()
        second.join(5)
        assert isinstance(outcome.get("leaving"), LeftBatch)  # failed while the run was still held
        assert len(scheduler.rows.rows) == 2  # the row moves only once no batched run is in flight
        release.set()
        first.join(30)
        closer.join(30)
        assert isinstance(outcome["staying"], tuple) and staying.position == 3
        assert len(scheduler.rows.rows) == 1 and scheduler.summary()["conversations"] == 1
        with pytest.raises(LeftBatch):
            leaving.feed([4])


def test_a_batched_conversation_decodes_beside_its_steps(pkg: Path, speech_16k: np.ndarray,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the overlapped streaming schedule, a conversation on the scheduler decodes its windows on the speech
    loop's decode worker (it has ``cancel_decode``, as ``OrtBackend``), beside its batched steps; those decodes
    leave its state alone (its loop thread goes on posting), and its audio equals the same greedy conversation's
    on ``OrtBackend`` sample for sample."""
    from bcaudio.config import StreamSettings
    from bcaudio.runtime.generation import batching

    schedule = StreamSettings(chunk_frames=2, first_chunk_frames=4, left_context_frames=3, growth=1.5,
                              max_chunk_frames=32, overlap_decode=True)
    greedy = _greedy(pkg)
    audio = speech_16k[: 16000 * 3]
    alone = VoiceAssistant(pkg, None, generation=greedy, stream=schedule, log=lambda _: None)
    want = collect(alone.respond(audio, 16000), 240)
    alone.close()
    sessions = PackageSessions(pkg, log=lambda _: None)
    seen: list[tuple[str, str]] = []  # (thread, the member's state) at each decode
    real = batching.decode_window
    with BatchScheduler(sessions) as scheduler:
        a = VoiceAssistant(pkg, None, generation=greedy, stream=schedule, log=lambda _: None, scheduler=scheduler,
                           sessions=sessions)
        member = a.backend.member

        def recorded(*args, **kwargs):
            seen.append((threading.current_thread().name, member.state))
            return real(*args, **kwargs)

        monkeypatch.setattr(batching, "decode_window", recorded)
        got = collect(a.respond(audio, 16000), 240)
        a.close()
    assert _tokens(got) == _tokens(want)
    np.testing.assert_array_equal(got.waveform(240), want.waveform(240))
    aside = [state for name, state in seen if name.startswith("bcaudio-decode")]
    assert aside, f"no window was decoded on the decode worker: {seen}"
    assert batching.AWAY not in aside  # a decode beside the steps does not mark the conversation away
    on_loop = [state for name, state in seen if not name.startswith("bcaudio-decode")]
    assert all(state == batching.AWAY for state in on_loop)  # one on the loop's own thread does
