"""Shared fixtures: the tiny preset, one exported tiny package, and real speech made offline by espeak-ng."""

from __future__ import annotations

import shutil
import signal
import subprocess
import weakref
from pathlib import Path

import numpy as np
import pytest

from bcaudio.config import ModelConfig, SamplingParams
from bcaudio.presets import get_preset
from bcaudio.runtime.generation.speech_loop import SpeechLoop

# Ctrl-C tests (in-process and in child processes) need Python's own SIGINT handler. A suite started in the
# background of a non-interactive shell inherits SIGINT ignored, which its children inherit too: the chat then
# never sees Ctrl-C and the tests hang instead of testing it.
signal.signal(signal.SIGINT, signal.default_int_handler)

SENTENCE = "Hello, this is a test of the voice assistant. What is the weather like today?"


@pytest.fixture(autouse=True)
def close_speech_loops(monkeypatch: pytest.MonkeyPatch) -> object:
    """Close every speech loop a test made that is still alive at its end: a streamed segment starts the
    conversation's decode worker, which otherwise lives on until the loop is collected, in a later test's
    thread counts and memory. Held weakly, so a loop the test dropped is collected as in a user's process
    (the soak tests count what a dropped assistant leaves behind)."""
    made: weakref.WeakSet[SpeechLoop] = weakref.WeakSet()
    init = SpeechLoop.__init__

    def tracked(self: SpeechLoop, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)
        made.add(self)

    monkeypatch.setattr(SpeechLoop, "__init__", tracked)
    yield
    for loop in list(made):
        loop.close()


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return get_preset("tiny")


@pytest.fixture
def greedy_cfg(tiny_cfg: ModelConfig) -> ModelConfig:
    """tiny with greedy, unpenalised phases and short limits: what the scripted-backend loop tests drive."""
    for phase in ("first_text", "text", "audio", "text_only"):
        params: SamplingParams = getattr(tiny_cfg.generation, phase)
        params.temperature, params.repetition_penalty = 0.0, 1.0
    tiny_cfg.generation.audio.max_new_tokens = 5
    tiny_cfg.generation.first_text.max_new_tokens = 6
    tiny_cfg.generation.text.max_new_tokens = 6
    return tiny_cfg


@pytest.fixture(scope="session")
def tiny_exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, fp32 package) of the tiny preset, seed 1, exported once for the whole session.

    Shared read-only: a test that changes a package works on a copy."""
    from bcaudio.export.checkpoint import init_checkpoint
    from bcaudio.export.package import export_package

    root = tmp_path_factory.mktemp("tiny")
    ckpt = init_checkpoint(get_preset("tiny"), root / "ckpt", seed=1)
    export_package(ckpt, root / "pkg", progress=lambda _: None)
    return ckpt, root / "pkg"


def espeak_wav(text: str, out: Path, rate: int = 16000) -> Path:
    """Speak ``text`` to a mono wav at ``rate`` (espeak-ng writes 22.05 kHz; sox converts). ``-D``: no dither,
    which sox otherwise adds with a fresh random seed each run, so every run hears the same samples (a dithered
    input changed the greedy turn of the waveform parity test between runs, and once its error past the bound)."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.fail("espeak-ng and sox are required: run `make test` (it installs them) or apt-get install them")
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", "-D", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)], check=True,
                   capture_output=True)
    raw.unlink()
    return out


@pytest.fixture(scope="session")
def speech_16k(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 5 s of English speech at 16 kHz, float32 in [-1, 1]."""
    import soundfile as sf

    path = espeak_wav(SENTENCE, tmp_path_factory.mktemp("speech") / "speech.wav")
    audio, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    return audio


@pytest.fixture(scope="session")
def tiny_package(tiny_exported: tuple[Path, Path]) -> Path:
    """A `tiny` package (seed 1) shared by the modules that only need one to run (server, page, README)."""
    return tiny_exported[1]
