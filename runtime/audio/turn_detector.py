"""End-of-turn classification with Smart Turn v3.2 (pipecat-ai's ONNX model) on plain onnxruntime.

A VAD hangover long enough to span a mid-sentence pause (640 ms) is paid on every turn. Smart
Turn looks at the words' prosody instead: after a short pause the classifier says whether the
user has finished, and only when it says no does the long hangover still apply.

The model ships inside the ``pipecat-ai`` wheel, installed with ``--no-deps`` (its Python imports
a whole framework; only the ONNX file is read), so the file is located through the distribution's
file list without importing anything of it. Input contract (pipecat's ``local_smart_turn_v3.py``):
the last 8 s of the utterance at 16 kHz, zero-padded at the start, as Whisper log-mel features
(80 bins, 800 frames, waveform normalized); output: the probability that the turn is complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from bcaudio.runtime.audio.wheel_models import find_wheel_file
from bcaudio.runtime.audio.whisper_features import whisper_log_mel

TURN_RATE = 16000
WINDOW_SECONDS = 8
MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
MODEL_ENV = "BCAUDIO_TURN_MODEL"
INSTALL_HINT = ("pip install --no-deps pipecat-ai==1.14.0 (only its smart-turn-v3.2-cpu.onnx is used), "
                f"or set {MODEL_ENV} to that file, or turn endpoint.turn_detector off in the device profile")


class TurnModelError(RuntimeError):
    """The Smart Turn graph cannot be found or loaded; the message says how to install it."""


def find_turn_model() -> Path:
    """``$BCAUDIO_TURN_MODEL``, else the ONNX file of the installed ``pipecat-ai`` wheel."""
    return find_wheel_file("pipecat-ai", MODEL_FILE, MODEL_ENV, INSTALL_HINT, TurnModelError)


class SmartTurn:
    """``probability(audio)``: how sure the model is that the utterance ending now is a finished turn."""

    def __init__(self, path: str | Path | None = None, threshold: float = 0.5, threads: int = 1) -> None:
        model = Path(path) if path else find_turn_model()
        if not model.is_file():
            raise TurnModelError(f"{model}: no such file; {INSTALL_HINT}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # runs beside the model's sessions during the user's pause
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise TurnModelError(f"{model}: onnxruntime cannot load it ({str(exc).splitlines()[0][:120]})") from None
        self.threshold = threshold
        self.path = model

    @staticmethod
    def features(audio16k: np.ndarray) -> np.ndarray:
        """(1, 80, 800) input of the last 8 s, zero-padded at the start."""
        audio = np.asarray(audio16k, dtype=np.float32).reshape(-1)
        size = WINDOW_SECONDS * TURN_RATE
        audio = audio[-size:] if audio.size >= size else np.pad(audio, (size - audio.size, 0))
        return whisper_log_mel(audio)[None]

    def probability(self, audio16k: np.ndarray) -> float:
        (prob,) = self.session.run(None, {"input_features": self.features(audio16k)})
        return float(np.asarray(prob).reshape(-1)[0])

    def finished(self, audio16k: np.ndarray) -> bool:
        return self.probability(audio16k) > self.threshold
