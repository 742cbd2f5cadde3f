"""A segment's first streamed window solved with fewer Euler steps (``StreamSettings.first_flow_steps``,
``stream_first_flow_steps`` in a device profile): unset, the turn is what it was; set, only the first window's
flow solve changes, and the later windows differ only by the source phase they take up from it (the vocoder's
sine source is one signal over the segment, integrated from the first window's f0)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np

from bcaudio.config import ModelConfig, StreamSettings
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.segment_stream import SegmentStream
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.speech_loop import TurnResult, collect

SCHEDULE = StreamSettings(chunk_frames=2, first_chunk_frames=4, left_context_frames=3, growth=1.5, max_chunk_frames=32)


def test_only_the_first_window_gets_the_first_steps(tiny_cfg: ModelConfig) -> None:
    calls: list[int | None] = []

    def decode(codes: np.ndarray, first: int, phase: SourcePhase, steps: int | None) -> np.ndarray:
        calls.append(steps)
        frames = tiny_cfg.decoded_frames(len(codes))
        phase.record(first * tiny_cfg.bridge.avg_pooler, np.zeros((phase.boundaries.shape[0], frames)))
        return np.zeros(frames * tiny_cfg.vocoder.samples_per_frame, np.float32)

    codes = np.zeros((20, tiny_cfg.bridge.num_codebooks), np.int64)
    for settings, want in ((dataclasses.replace(SCHEDULE, first_flow_steps=3), 3), (SCHEDULE, None)):
        calls.clear()
        stream = SegmentStream(decode, settings, 240, tiny_cfg)
        for k in range(1, 21):
            stream.add(codes[:k])
        stream.finish(codes)
        assert len(calls) >= 4 and calls == [want] + [None] * (len(calls) - 1)
    calls.clear()
    SegmentStream(decode, dataclasses.replace(SCHEDULE, first_flow_steps=3), 240, tiny_cfg).finish(codes[:3])
    assert calls == [None]  # a segment that never streamed is decoded whole, with the flow steps


Decoded = tuple[np.ndarray, int, int, SourcePhase | None, int | None, np.ndarray]


def greedy_turn(pkg: Path, speech: np.ndarray, first_flow_steps: int) -> tuple[TurnResult, list[Decoded]]:
    """The greedy streamed turn on the tiny package, and each decode it made: (codes, segment, first code, the
    source phase it was given, flow steps asked, its waveform)."""
    a = VoiceAssistant(pkg, None, log=lambda _: None, flow_steps=6,
                       stream=dataclasses.replace(SCHEDULE, first_flow_steps=first_flow_steps))
    a.loop.gen = dataclasses.replace(a.loop.gen, **{k: v for k, v in vars(a.loop.gen.greedy()).items()
                                                    if k in ("first_text", "text", "audio")})
    calls: list[Decoded] = []
    decode = a.backend.decode_segment

    def recorded(codes, segment, first_code=0, phase=None, flow_steps=None):
        given = copy.deepcopy(phase)
        wave = decode(codes, segment, first_code, phase, flow_steps)
        calls.append((np.array(codes), segment, first_code, given, flow_steps, wave))
        return wave

    a.backend.decode_segment = recorded  # type: ignore[method-assign]
    result = collect(a.respond(speech, 16000), 240)
    a.close()
    return result, calls


def test_first_window_steps_change_only_the_first_window(tiny_package: Path, speech_16k: np.ndarray) -> None:
    plain, plain_calls = greedy_turn(tiny_package, speech_16k, 0)
    fewer, fewer_calls = greedy_turn(tiny_package, speech_16k, 2)
    assert sum(not s.final for s in plain.segments) >= 2, "no segment streamed: the test needs longer segments"
    assert all(steps is None for *_, steps, _ in plain_calls)  # unset: every window at the backend's flow steps
    assert fewer.text_ids == plain.text_ids and len(fewer_calls) == len(plain_calls)
    for g, p in zip(fewer.segment_codes(), plain.segment_codes(), strict=True):
        np.testing.assert_array_equal(g, p)
    lengths = [len(c) for c in plain.segment_codes()]
    firsts = {segment: k for k, (_, segment, *_) in reversed(list(enumerate(plain_calls)))}
    backend = VoiceAssistant(tiny_package, None, log=lambda _: None, flow_steps=6).backend
    streamed = 0
    for k, ((codes, segment, first, phase, steps, wave), plain_call) in enumerate(zip(fewer_calls, plain_calls,
                                                                                      strict=True)):
        np.testing.assert_array_equal(codes, plain_call[0])
        assert (segment, first) == plain_call[1:3]
        if k == firsts[segment] and lengths[segment] >= SCHEDULE.first_chunk_frames:
            assert steps == 2
            streamed += 1
            again = backend.decode_segment(codes, segment, first, copy.deepcopy(phase), 2)
            np.testing.assert_array_equal(wave, again)  # the first window is a decode of its codes with 2 steps
            assert np.abs(wave - plain_call[5]).max() > 1e-3  # ... which is not the 6-step decode
        elif phase is None:  # a segment decoded whole: as it was
            assert steps is None
            np.testing.assert_array_equal(wave, plain_call[5])
        else:  # a later window: with the phase the 6-step first window left, it is the 6-step turn's window
            assert steps is None
            again = backend.decode_segment(codes, segment, first, copy.deepcopy(plain_call[3]), steps)
            np.testing.assert_array_equal(again, plain_call[5])
    assert streamed >= 2
