"""Segments decoded in windows (runtime/generation/segment_stream.py): the sample bookkeeping and the cost bound.
The streamed turn on the tiny package is in test_runtime_e2e.py."""

from __future__ import annotations

import numpy as np
import pytest

from bcaudio.config import ModelConfig, StreamSettings
from bcaudio.runtime.generation.segment_stream import SegmentStream
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.speech_loop import crossfade_join

CROSSFADE = 240


def positional_decoder(cfg: ModelConfig, calls: list[tuple[int, int]]):
    """A decoder whose output depends only on the global sample index: windows must join to the whole."""
    code_samples = cfg.bridge.avg_pooler * cfg.vocoder.samples_per_frame

    def decode(codes: np.ndarray, first: int, phase: SourcePhase, steps: int | None = None) -> np.ndarray:
        calls.append((first, len(codes)))
        frames = cfg.decoded_frames(len(codes))
        phase.record(first * cfg.bridge.avg_pooler, np.zeros((phase.boundaries.shape[0], frames)))
        n = frames * cfg.vocoder.samples_per_frame
        index = first * code_samples + np.arange(n)
        return np.sin(index * 0.0137).astype(np.float32)

    return decode


def stream_segment(stream: SegmentStream, codes: np.ndarray) -> list[np.ndarray]:
    pieces = [w for k in range(1, len(codes) + 1) for _, w in stream.add(codes[:k])]
    return pieces + [w for _, w in stream.finish(codes)]


@pytest.mark.parametrize("chunk,first,left,holdback", [(1, 0, 1, 0), (3, 0, 2, 960), (8, 0, 6, 4800), (8, 0, 1, 4800),
                                                     (5, 0, 6, 0), (12, 4, 6, 4800), (4, 9, 2, 960)])
@pytest.mark.parametrize("frames", [1, 7, 8, 16, 17, 40])
def test_windows_join_to_the_whole_segment(tiny_cfg: ModelConfig, chunk: int, first: int, left: int, holdback: int,
                                           frames: int) -> None:
    calls: list[tuple[int, int]] = []
    decode = positional_decoder(tiny_cfg, calls)
    codes = np.zeros((frames, tiny_cfg.bridge.num_codebooks), np.int64)
    whole = decode(codes, 0, SourcePhase(tiny_cfg.vocoder.nb_harmonics + 1))
    calls.clear()
    stream = SegmentStream(decode, StreamSettings(chunk, first, left, holdback), CROSSFADE, tiny_cfg)
    pieces = stream_segment(stream, codes)
    joined = crossfade_join(pieces, CROSSFADE)
    assert joined.size == whole.size
    np.testing.assert_allclose(joined, whole, atol=1e-6)
    # bounded recompute: each window decodes its new codes plus the left context (widened only as far as the
    # held-back samples and the crossfade need), never the growing prefix
    code_samples = tiny_cfg.bridge.avg_pooler * tiny_cfg.vocoder.samples_per_frame
    widest = max(left, -(-(holdback + CROSSFADE + tiny_cfg.vocoder.samples_per_frame) // code_samples))
    assert all(n <= max(chunk, first) + widest for _, n in calls[:-1])
    if frames > (first or chunk):
        assert calls[0] == (0, first or chunk)  # the first window comes as soon as its frames exist
    assert sum(n for _, n in calls) <= frames + len(calls) * widest


def test_no_chunk_decodes_the_whole_segment_once(tiny_cfg: ModelConfig) -> None:
    calls: list[tuple[int, int]] = []
    stream = SegmentStream(positional_decoder(tiny_cfg, calls), StreamSettings(), CROSSFADE, tiny_cfg)
    codes = np.zeros((30, tiny_cfg.bridge.num_codebooks), np.int64)
    assert len(stream_segment(stream, codes)) == 1 and calls == [(0, 30)]


def test_stream_settings_are_validated() -> None:
    from bcaudio.config import ConfigError

    with pytest.raises(ConfigError, match="left_context_frames"):
        StreamSettings(chunk_frames=8, left_context_frames=0).validate()


def test_growing_schedule_sizes() -> None:
    grow = StreamSettings(chunk_frames=6, first_chunk_frames=4, growth=1.5, max_chunk_frames=20)
    assert [grow.window_frames(k) for k in range(8)] == [4, 6, 9, 14, 20, 20, 20, 20]
    uncapped = StreamSettings(chunk_frames=4, growth=2.0)
    assert [uncapped.window_frames(k) for k in range(5)] == [4, 4, 8, 16, 32]
    constant = StreamSettings(chunk_frames=16, first_chunk_frames=6)
    assert [constant.window_frames(k) for k in range(4)] == [6, 16, 16, 16]
    assert StreamSettings(growth=2.0).window_frames(3) == 0  # not streamed


@pytest.mark.parametrize("frames", [5, 11, 30, 57])
def test_growing_windows_follow_the_schedule_and_join_to_the_whole(tiny_cfg: ModelConfig, frames: int) -> None:
    calls: list[tuple[int, int]] = []
    decode = positional_decoder(tiny_cfg, calls)
    codes = np.zeros((frames, tiny_cfg.bridge.num_codebooks), np.int64)
    whole = decode(codes, 0, SourcePhase(tiny_cfg.vocoder.nb_harmonics + 1))
    calls.clear()
    settings = StreamSettings(chunk_frames=4, first_chunk_frames=3, left_context_frames=3, holdback_samples=960,
                              growth=2.0, max_chunk_frames=16)
    joined = crossfade_join(stream_segment(SegmentStream(decode, settings, CROSSFADE, tiny_cfg), codes), CROSSFADE)
    np.testing.assert_allclose(joined, whole, atol=1e-6)
    # each window ends where the schedule's sizes of new codes add up to (3, then 4, 8, 16, 16, ...), and
    # the segment's end gets a last window unless one ended there
    expected, end, k = [], 0, 0
    while end + settings.window_frames(k) <= frames:
        end += settings.window_frames(k)
        expected.append(end)
        k += 1
    if end < frames:
        expected.append(frames)
    assert [first + n for first, n in calls] == expected
    code_samples = tiny_cfg.bridge.avg_pooler * tiny_cfg.vocoder.samples_per_frame
    widest = max(3, -(-(960 + CROSSFADE + tiny_cfg.vocoder.samples_per_frame) // code_samples))
    assert sum(n for _, n in calls) <= frames + len(calls) * widest  # bounded recompute, as with fixed windows
