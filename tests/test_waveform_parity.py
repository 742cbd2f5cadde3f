"""Waveform parity where an error would show: a tiny model whose vocoder output is scaled into the clamp.

With the shipped +-0.99 clamp, most of a random tiny turn's samples sit on the clamp, where any upstream error
is invisible. The fixture lowers the log-magnitude biases of the random checkpoint's last conv (``conv_post``,
the iSTFT's magnitudes are exp of them), so the real graphs, exported from that checkpoint as any other, give a
waveform inside the clamp: every sample is compared. Measured numbers: README "Validation" (waveform parity).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from float_floor import MARGIN, f0_one_step_up, nudged

from bcaudio.config import StreamSettings
from bcaudio.export.checkpoint import HIFT_FILE, init_checkpoint, load_checkpoint
from bcaudio.export.package import export_package
from bcaudio.export.reference_backend import TorchBackend
from bcaudio.export.reference_turn import reference_events
from bcaudio.presets import get_preset
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.speech_loop import collect
from bcaudio.runtime.package.profiles import load_profile
from bcaudio.runtime.package.text_codec import TextCodec

# conv_post's log-magnitude channels become LOG_MAGNITUDE_SCALE * x - log(QUIETER): halved, a random tiny's
# magnitudes (exp of up to 12) no longer reach the iSTFT's cap of 100, and lowered, the waveform peaks below
# the clamp. A shift alone is not enough: the capped magnitudes keep the peaks above 0.99 down to 1/4096.
LOG_MAGNITUDE_SCALE = 0.5
QUIETER = 64.0
FLOOR_OF_PEAK = 1e-4  # the float32 floor itself must stay this small


@pytest.fixture(scope="module")
def unclamped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, package) of tiny seed 1 with conv_post's log-magnitudes scaled as above."""
    cfg = get_preset("tiny")
    root = tmp_path_factory.mktemp("unclamped")
    ckpt = init_checkpoint(cfg, root / "ckpt", seed=1)
    hift = torch.load(ckpt / HIFT_FILE)
    bins = cfg.vocoder.istft_n_fft // 2 + 1
    hift["conv_post.weight_g"][:bins] *= LOG_MAGNITUDE_SCALE  # weight norm: g scales each output channel
    hift["conv_post.bias"][:bins] = LOG_MAGNITUDE_SCALE * hift["conv_post.bias"][:bins] - math.log(QUIETER)
    torch.save(hift, ckpt / HIFT_FILE)
    export_package(ckpt, root / "pkg", progress=lambda _: None)
    return ckpt, root / "pkg"


def envelope(x: np.ndarray, hop: int = 480) -> np.ndarray:
    n = x.size // hop * hop
    return np.sqrt((x[:n].reshape(-1, hop) ** 2).mean(axis=1))


def _segments_decoded(ref, want) -> list[np.ndarray]:
    backend = TorchBackend(ref, 0)
    return [backend.decode_segment(w.codes, i) for i, w in enumerate(want.segments)]


def test_turn_waveform_equals_the_torch_reference_inside_the_clamp(unclamped: tuple[Path, Path],
                                                                  speech_16k: np.ndarray) -> None:
    """ONNX (the package's graphs, run by the runtime) vs the torch reference over a whole greedy turn, every
    sample inside the clamp, within MARGIN x the reference's own float32 floor (tests/float_floor.py).
    Negative control: the torch reference with its F0 predictor's bias one float32 step higher fails it."""
    ckpt, pkg = unclamped
    ref = load_checkpoint(ckpt)
    want = collect(reference_events(ref, TextCodec(ckpt / "tokenizer.json"), "respond", speech_16k, None, 0, True), 240)
    got = collect(VoiceAssistant(pkg, None, generation=ref.cfg.generation.greedy(), log=lambda _: None)
                  .respond(speech_16k, 16000), 240)
    assert len(got.segments) == len(want.segments) >= 1
    assert all(np.array_equal(d, w.waveform) for d, w in zip(_segments_decoded(ref, want), want.segments, strict=True))
    vocoder = nudged(ref)
    floors = _segments_decoded(ref, want)
    ref.parts["vocoder"] = vocoder
    f0_one_step_up(vocoder)
    shifted = _segments_decoded(ref, want)
    for g, w, n, f in zip(got.segments, want.segments, floors, shifted, strict=True):
        assert np.array_equal(g.codes, w.codes)
        peak = np.abs(w.waveform).max()
        assert 0.05 < peak < ref.cfg.vocoder.audio_limit  # audible, and no sample on the clamp
        floor = np.abs(n - w.waveform).max()
        assert 0 < floor <= FLOOR_OF_PEAK * peak
        assert np.abs(g.waveform - w.waveform).max() <= MARGIN * floor
        assert np.abs(f - w.waveform).max() > MARGIN * floor  # the negative control


@pytest.mark.parametrize("stream", [StreamSettings(chunk_frames=4), load_profile("cpu-2core").generation.stream()],
                         ids=["4-frame windows", "cpu-2core's growing schedule"])
def test_streamed_decode_keeps_the_whole_segments_content(unclamped: tuple[Path, Path], speech_16k: np.ndarray,
                                                          stream: StreamSettings) -> None:
    """Windows are a different rendering of the same codes (README "Streaming inside a segment"), so not equal;
    but the same loudness and energy over time as the whole-segment decode, which an independent sample of it
    (another noise draw) does not follow: for fixed windows and for the shipped 2-core profile's schedule. Not
    sample-wise (SNR): each window's own mel gives a slightly other f0, whose phase the voiced source integrates,
    so the waveforms drift apart in phase (measured SNR -1.2 dB, another draw -1.9 dB), and the random vocoder
    magnifies that into the envelope too (measured correlation 0.38, another draw 0.24: the margin is thin on
    random weights)."""
    _, pkg = unclamped
    def turn(generation, seed: int = 0):
        assistant = VoiceAssistant(pkg, None, generation=generation, seed=seed, log=lambda _: None)
        return collect(assistant.respond(speech_16k, 16000), 240)

    greedy = VoiceAssistant(pkg, None, log=lambda _: None).cfg.generation.greedy()
    whole, other = turn(greedy), turn(greedy, seed=7)
    streamed = turn(dataclasses.replace(greedy, stream=stream))
    codes = [c.tolist() for c in whole.segment_codes()]
    assert [c.tolist() for c in streamed.segment_codes()] == codes == [c.tolist() for c in other.segment_codes()]
    assert len(streamed.segments) > len(codes)  # it did stream
    w, s, o = whole.waveform(240), streamed.waveform(240), other.waveform(240)
    assert w.size == s.size == o.size
    streamed_env, other_env = (np.corrcoef(envelope(x), envelope(w))[0, 1] for x in (s, o))
    assert streamed_env >= 0.3 and other_env < streamed_env - 0.1
    assert 0.8 <= np.sqrt((s**2).mean() / (w**2).mean()) <= 1.25
