"""Silero VAD on plain onnxruntime (no torch, no silero_vad import) and the endpointer's hangovers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bcaudio.runtime.audio.vad import (
    FRAME_MS,
    MODEL_ENV,
    Endpointer,
    EndpointSettings,
    SileroVad,
    VadModelError,
    speech_segments,
)


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def _noise(seconds: float, level: float, seed: int = 0) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def test_finds_speech_padded_with_silence_and_noise(vad: SileroVad, speech_16k: np.ndarray) -> None:
    pad = np.zeros(16000, np.float32)
    audio = np.concatenate([pad, speech_16k, pad]) + _noise(2 + speech_16k.size / 16000, 0.01)
    segments = speech_segments(audio, vad)
    assert len(segments) == 1
    start, end = segments[0]
    assert 0.8 < start < 1.3  # the speech starts at 1.0 s
    assert end > 1.0 + 0.8 * speech_16k.size / 16000


@pytest.mark.parametrize("audio", [np.zeros(48000, np.float32), _noise(3, 0.05), _noise(3, 0.2, seed=1)],
                         ids=["silence", "noise", "loud-noise"])
def test_no_speech_in_silence_or_noise(vad: SileroVad, audio: np.ndarray) -> None:
    assert speech_segments(audio, vad) == []
    assert vad.probabilities(audio).max() < 0.5


def test_endpointer_start_and_end_hangover() -> None:
    settings = EndpointSettings(start_ms=96, end_ms=320)  # 3 and 10 frames of 32 ms
    ep = Endpointer(settings)
    assert FRAME_MS == 32
    probs = [0.9, 0.1, 0.9, 0.9, 0.9] + [0.4] * 5 + [0.1] * 9 + [0.9] + [0.1] * 10
    changes = [(i, c) for i, p in enumerate(probs) if (c := ep.update(p))]
    # a one-frame blip does not start; 0.4 is between release and threshold: still speech; a one-frame
    # burst inside the hangover restarts it
    assert changes == [(4, "start"), (29, "end")]


def test_model_path_errors_name_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "missing.onnx"))
    with pytest.raises(VadModelError, match="--no-deps"):
        SileroVad()
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(VadModelError, match="cannot load"):
        SileroVad(tmp_path / "bad.onnx")


def test_live_modules_never_import_torch_or_silero_python() -> None:
    code = ("import sys\n"
            "import bcaudio.cli.chat\n"
            "from bcaudio.runtime.audio import vad\n"
            "from bcaudio.runtime.live import conversation\n"
            "v = vad.SileroVad(); v.frame([0.0] * 512)\n"
            "bad = [m for m in ('torch', 'silero_vad') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_endpointer_asks_the_turn_detector_only_once_the_utterance_is_long_enough() -> None:
    """``turn_min_ms``: a pause after a short greeting is not judged, the same pause later in the utterance is."""
    probs = [0.9] * 10 + [0.1] * 7 + [0.9] * 20 + [0.1] * 7  # speech, a 7-frame pause, more speech, a pause
    for min_ms, want in [(0, [(2, "start"), (15, "pause"), (42, "pause")]),
                         (640, [(2, "start"), (42, "pause")])]:  # 20 frames: the first pause comes at 16
        ep = Endpointer(EndpointSettings(start_ms=96, end_ms=640, turn_detector=True, turn_pause_ms=192,
                                         turn_min_ms=min_ms))
        assert [(i, c) for i, p in enumerate(probs) if (c := ep.update(p))] == want
