"""A streamed window decoded on a worker thread while the next window's frames are made
(``StreamSettings.overlap_decode``): the same turn sample for sample, pieces in order, a cut-off turn stops the
decode in flight, and one worker per conversation serves all its segments and turns until it is closed."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bcaudio.config import ModelConfig, StreamSettings
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.segment_stream import SegmentStream
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.speech_loop import AudioSegment, TurnResult, collect

SCHEDULE = StreamSettings(chunk_frames=2, first_chunk_frames=4, left_context_frames=3, growth=1.5, max_chunk_frames=32)


def decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("bcaudio-decode")]


def started_since(old: set[threading.Thread]) -> list[threading.Thread]:
    """Threads alive now that were not at ``old``: this test's own. Another test's unclosed conversation may
    still hold a decode worker until it is collected, and it may end at any moment, so counts of every thread
    in the process would be that test's, not this one's."""
    return [t for t in threading.enumerate() if t not in old]


def assistant(pkg: Path, overlap: bool, delay: float = 0.0) -> tuple[VoiceAssistant, list[str]]:
    """A greedy conversation on the tiny package with the growing schedule; ``delay`` slows each decode, so the
    frames run ahead of it; the names of the threads that decoded are recorded."""
    a = VoiceAssistant(pkg, None, log=lambda _: None, stream=dataclasses.replace(SCHEDULE, overlap_decode=overlap))
    a.loop.gen = dataclasses.replace(a.loop.gen, **{k: v for k, v in vars(a.loop.gen.greedy()).items()
                                                    if k in ("first_text", "text", "audio")})
    threads: list[str] = []
    decode = a.backend.decode_segment

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        time.sleep(delay)
        return decode(*args, **kwargs)

    a.backend.decode_segment = recorded  # type: ignore[method-assign]
    return a, threads


def turn(a: VoiceAssistant, speech: np.ndarray) -> tuple[TurnResult, list[int]]:
    """The turn, and for each piece how far the conversation had gone when it came out."""
    lengths: list[int] = []

    def watched():
        for event in a.respond(speech, 16000):
            if isinstance(event, AudioSegment):
                lengths.append(len(a.loop.context))
            yield event

    return collect(watched(), 240), lengths


def test_overlapped_decode_gives_the_same_turn_sample_for_sample(tiny_package: Path, speech_16k: np.ndarray) -> None:
    before = len(decode_threads())
    plain_assistant, plain_threads = assistant(tiny_package, overlap=False)
    plain, plain_lengths = turn(plain_assistant, speech_16k)
    got_assistant, got_threads = assistant(tiny_package, overlap=True, delay=0.05)
    got, got_lengths = turn(got_assistant, speech_16k)
    got_assistant.close()
    assert sum(not s.final for s in plain.segments) >= 2, "no segment streamed: the test needs longer segments"
    assert got.text_ids == plain.text_ids and got.reason == plain.reason
    assert len(got.segments) == len(plain.segments)
    for g, p in zip(got.segments, plain.segments, strict=True):
        assert (g.final, g.end) == (p.final, p.end)
        np.testing.assert_array_equal(g.codes, p.codes)
        np.testing.assert_array_equal(g.waveform, p.waveform)  # sample for sample
    assert set(plain_threads) == {"MainThread"}
    assert any(name.startswith("bcaudio-decode") for name in got_threads)  # the windows were decoded aside
    # unstreamed, a piece comes out as its last frame is made; overlapped, the frames run ahead of it
    assert plain_lengths == [s.end for s in plain.segments]
    assert any(n > s.end for n, s in zip(got_lengths, got.segments, strict=True) if not s.final)
    # the turn's first piece comes out at once (the speaker is waiting for it); a segment's last piece may come
    # out during the next text step, decoded beside it
    assert got_lengths[0] == got.segments[0].end
    assert any(n > s.end for n, s in zip(got_lengths, got.segments, strict=True) if s.final)
    assert len(decode_threads()) == before


def test_one_decode_worker_serves_every_segment_and_turn(tiny_package: Path, speech_16k: np.ndarray) -> None:
    """The loop's worker is made on the first streamed segment and kept: over many segments and turns the windows
    decoded aside all ran on one thread, no more threads were left than that one, and closing the conversation
    ends it."""
    before = set(threading.enumerate())
    a, _ = assistant(tiny_package, overlap=True)
    decode, idents, counts = a.backend.decode_segment, set(), []

    def recorded(*args, **kwargs):
        if threading.current_thread().name.startswith("bcaudio-decode"):
            idents.add(threading.get_ident())
        counts.append(len(started_since(before)))
        return decode(*args, **kwargs)

    a.backend.decode_segment = recorded  # type: ignore[method-assign]
    segments = 0
    for _ in range(5):
        segments += sum(s.final for s in collect(a.respond(speech_16k, 16000), 240).segments)
        new = started_since(before)
        assert len(new) == 1 and new[0].name.startswith("bcaudio-decode")
    assert segments >= 5 and len(idents) == 1 and max(counts) == 1
    a.close()
    assert started_since(before) == []


def test_pieces_come_in_order_once_decoded(tiny_cfg: ModelConfig) -> None:
    """With a worker, the segment's first window is decoded at once (the speaker may be waiting for it) and later
    ones aside: ``add`` hands a piece out only when its decode is done, and the next window waits for it (one
    decode in flight); the pieces are those of the stream without a worker."""
    gate = threading.Event()
    code_samples = tiny_cfg.bridge.avg_pooler * tiny_cfg.vocoder.samples_per_frame

    def decode(codes: np.ndarray, first: int, phase: SourcePhase, steps: int | None = None) -> np.ndarray:
        if threading.current_thread().name.startswith("bcaudio-decode"):
            assert gate.wait(5)
        frames = tiny_cfg.decoded_frames(len(codes))
        phase.record(first * tiny_cfg.bridge.avg_pooler, np.zeros((phase.boundaries.shape[0], frames)))
        return np.sin((first * code_samples + np.arange(frames * tiny_cfg.vocoder.samples_per_frame)) * 0.01
                      ).astype(np.float32)

    codes = np.zeros((20, tiny_cfg.bridge.num_codebooks), np.int64)
    settings = StreamSettings(chunk_frames=4, left_context_frames=2, holdback_samples=960)
    plain = SegmentStream(decode, settings, 240, tiny_cfg)
    want = [p for k in range(1, 21) for p in plain.add(codes[:k])] + plain.finish(codes)
    with ThreadPoolExecutor(1, "bcaudio-decode") as worker:
        stream = SegmentStream(decode, settings, 240, tiny_cfg, worker)
        early = [stream.add(codes[:k]) for k in range(1, 12)]
        assert [len(p) for p in early] == [0, 0, 0, 1] + [0] * 7  # window 2 (from frame 8) is held at the gate
        assert stream.pending is not None and stream.windows == 2
        gate.set()
        got = [piece for ready in early for piece in ready] + [p for k in range(12, 21) for p in stream.add(codes[:k])]
        got += stream.finish(codes)
    assert [end for end, _ in got] == [end for end, _ in want] == [4, 8, 12, 16, 20, 20]  # the last: its hold-back
    for (_, g), (_, w) in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("frames", [3, 8, 11])
def test_deferred_last_window_gives_the_same_pieces(tiny_cfg: ModelConfig, frames: int) -> None:
    """``first_at_once=False`` and ``finish(defer=True)``: every window on the worker, the last piece handed out by
    ``drain`` (a segment never streamed, one whose last window was in flight at its end, and one whose last
    window starts at ``finish``), the pieces equal to the stream's without a worker."""
    code_samples = tiny_cfg.bridge.avg_pooler * tiny_cfg.vocoder.samples_per_frame
    threads: list[str] = []

    def decode(codes: np.ndarray, first: int, phase: SourcePhase, steps: int | None = None) -> np.ndarray:
        threads.append(threading.current_thread().name)
        frames_ = tiny_cfg.decoded_frames(len(codes))
        phase.record(first * tiny_cfg.bridge.avg_pooler, np.zeros((phase.boundaries.shape[0], frames_)))
        return np.sin((first * code_samples + np.arange(frames_ * tiny_cfg.vocoder.samples_per_frame)) * 0.01
                      ).astype(np.float32)

    codes = np.zeros((frames, tiny_cfg.bridge.num_codebooks), np.int64)
    settings = StreamSettings(chunk_frames=4, first_chunk_frames=4, left_context_frames=2, holdback_samples=960)
    plain = SegmentStream(decode, settings, 240, tiny_cfg)
    want = [p for k in range(1, frames + 1) for p in plain.add(codes[:k])] + plain.finish(codes)
    threads.clear()
    with ThreadPoolExecutor(1, "bcaudio-decode") as worker:
        stream = SegmentStream(decode, settings, 240, tiny_cfg, worker, first_at_once=False)
        got = [p for k in range(1, frames + 1) for p in stream.add(codes[:k])]
        got += stream.finish(codes, defer=True)
        assert stream.pending is not None  # the last piece is still to come
        got += stream.drain()
        assert stream.pending is None and stream.drain() == []
    assert threads and all(t.startswith("bcaudio-decode") for t in threads)
    assert [end for end, _ in got] == [end for end, _ in want]
    for (_, g), (_, w) in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_closed_turns_stop_the_decode_in_flight_and_leave_no_thread(tiny_package: Path,
                                                                    speech_16k: np.ndarray) -> None:
    """A turn closed at its second piece (a barge-in) while the next window is being decoded returns at once: the
    decode is stopped (onnxruntime's terminate flag on the runs it makes), not waited for; over several turns
    only the conversation's idle worker is left, the conversation goes on, and closing it ends the worker."""
    a, _ = assistant(tiny_package, overlap=True)
    a.loop.gen.stream = dataclasses.replace(a.loop.gen.stream, first_chunk_frames=2, chunk_frames=2, growth=1.0)
    before = set(threading.enumerate())
    real, stopped, running = a.backend.decode_segment, [], threading.Event()
    calls: dict[int, int] = {}  # decodes per answer segment so far

    def decode(codes, segment, first_code=0, phase=None, flow_steps=None):
        calls[segment] = calls.get(segment, 0) + 1
        options = a.backend._decode_options  # what this decode's runs see
        wave = real(codes, segment, first_code, phase, flow_steps)
        if calls[segment] <= 2:  # the second window, aside: slow enough that the third is due and started when done
            time.sleep(0.5 if calls[segment] == 2 else 0)
            return wave
        running.set()
        started = time.perf_counter()  # later windows: 5 s unless stopped
        while not options.terminate and time.perf_counter() - started < 5:
            time.sleep(0.005)
        stopped.append(options.terminate)
        return wave

    a.backend.decode_segment = decode  # type: ignore[method-assign]
    turns = 4
    for _ in range(turns):
        events = a.respond(speech_16k, 16000)
        pieces = (e for e in events if isinstance(e, AudioSegment))
        assert not next(pieces).final and not next(pieces).final
        assert running.wait(3)  # the next window's decode has begun on the worker
        running.clear()
        t0 = time.perf_counter()
        events.close()
        assert time.perf_counter() - t0 < 2.0
        new = started_since(before)  # the loop's worker, idle: it decodes the next turn's windows
        assert len(new) == 1 and new[0].name.startswith("bcaudio-decode")
    assert stopped == [True] * turns  # each close found the third window's decode in flight, and stopped it
    a.backend.decode_segment = real  # type: ignore[method-assign]
    assert collect(a.respond(speech_16k, 16000), 240).segments  # the conversation still answers
    a.close()
    assert started_since(before) == []


def test_cancel_decode_stops_a_run_in_flight_and_not_the_next(tiny_package: Path) -> None:
    a = VoiceAssistant(tiny_package, None, log=lambda _: None)
    codes = np.zeros((6, a.cfg.bridge.num_codebooks), np.int64)
    options = a.backend._decode_options
    a.backend.cancel_decode()
    assert options.terminate and not a.backend._decode_options.terminate
    with pytest.raises(Exception, match="terminate"):
        a.sessions.run("flow_prenet", {"codes": codes[None]}, options=options)
    assert a.backend.decode_segment(codes, 0).size > 0


def test_decoder_and_head_threads_are_those_graphs_own(tiny_package: Path) -> None:
    from bcaudio.runtime.package.manifest import ManifestError
    from bcaudio.runtime.package.sessions import DECODER_GRAPHS, PackageSessions, SessionSettings

    sessions = PackageSessions(tiny_package, SessionSettings(intra_op_threads=2, decoder_threads=1), log=lambda _: None)
    threads = {name: s.get_session_options().intra_op_num_threads for name, s in sessions.sessions.items()}
    assert threads == {name: 1 if name in DECODER_GRAPHS else 2 for name in threads}
    sessions = PackageSessions(tiny_package, SessionSettings(intra_op_threads=2, head_threads=1), log=lambda _: None)
    threads = {name: s.get_session_options().intra_op_num_threads for name, s in sessions.sessions.items()}
    assert threads == {name: 1 if name == "audio_head" else 2 for name in threads}
    for key in ("decoder_threads", "head_threads"):
        with pytest.raises(ManifestError, match=f"{key} 4096 is out of range"):
            SessionSettings(**{key: 4096}).validate()
