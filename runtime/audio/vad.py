"""Voice activity detection with Silero VAD's ONNX graph, and endpointing on its speech probabilities.

The ``silero-vad`` wheel ships the graph but its Python package imports torch, which the runtime must
never load. So the graph file is located through the installed distribution's file list
(``importlib.metadata``: nothing of the package is imported) or an explicit path, and runs in its own
small onnxruntime session next to the model package's sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bcaudio.runtime.audio.wheel_models import find_wheel_file

VAD_RATE = 16000
FRAME = 512  # samples per Silero step at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame the graph sees before each frame
FRAME_MS = 1000 * FRAME // VAD_RATE
MODEL_ENV = "BCAUDIO_VAD_MODEL"
INSTALL_HINT = ("pip install --no-deps silero-vad==6.2.3 (only its ONNX file is used; --no-deps keeps torch out), "
                f"or set {MODEL_ENV} to a silero_vad.onnx file")


class VadModelError(RuntimeError):
    """The Silero graph cannot be found or loaded; the message says how to install it."""


def find_vad_model() -> Path:
    """``$BCAUDIO_VAD_MODEL``, else ``silero_vad/data/silero_vad.onnx`` of the installed ``silero-vad`` wheel."""
    return find_wheel_file("silero-vad", "silero_vad/data/silero_vad.onnx", MODEL_ENV, INSTALL_HINT, VadModelError)


class SileroVad:
    """Streaming speech probability per 32 ms frame of 16 kHz audio (recurrent state kept between calls)."""

    def __init__(self, path: str | Path | None = None) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # a tiny LSTM: one thread, no contention with the LLM's sessions
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        model = Path(path) if path else find_vad_model()
        try:
            self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise VadModelError(f"{model}: onnxruntime cannot load it ({str(exc).splitlines()[0][:120]})") from None
        self._sr = np.array(VAD_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state and context: the next frame starts a new stream."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def frame(self, samples: np.ndarray) -> float:
        """Speech probability of one frame of exactly ``FRAME`` samples."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size != FRAME:
            raise ValueError(f"a VAD frame is {FRAME} samples at 16 kHz, got {samples.size}")
        x = np.concatenate([self._context, samples])[None]
        prob, self._state = self.session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = samples[-CONTEXT:]
        return float(prob[0, 0])

    def probabilities(self, audio16k: np.ndarray) -> np.ndarray:
        """One probability per whole frame of ``audio16k`` (a trailing partial frame is ignored), from a fresh state."""
        self.reset()
        audio = np.asarray(audio16k, dtype=np.float32).reshape(-1)
        return np.array([self.frame(audio[i:i + FRAME]) for i in range(0, audio.size - FRAME + 1, FRAME)])


@dataclass
class EndpointSettings:
    """When speech starts and ends, in milliseconds of 32 ms VAD frames.

    ``start_ms`` of consecutive speech frames start an utterance (a cough or click is shorter);
    ``end_ms`` of consecutive non-speech frames end it (the hangover: a pause between words is
    shorter). ``pre_roll_ms`` of audio before the start is kept, since the first syllable's onset
    scores below the threshold. Below ``threshold`` but above ``release`` counts as still speaking.
    With ``turn_detector``, ``turn_pause_ms`` of non-speech is a pause the Smart Turn classifier
    judges (``"pause"``): finished (probability above ``turn_threshold``) ends the utterance there,
    otherwise the hangover still applies. The detector is asked only once the utterance has lasted
    ``turn_min_ms`` (a greeting alone, "Hello!", sounds finished and is usually followed by the question).
    A device profile's ``[endpoint]`` section sets these.
    """

    threshold: float = 0.5
    release: float = 0.35
    start_ms: int = 96
    end_ms: int = 640
    pre_roll_ms: int = 256
    turn_detector: bool = False
    turn_pause_ms: int = 192
    turn_threshold: float = 0.5
    turn_min_ms: int = 0

    def frames(self, ms: int) -> int:
        return max(1, -(-ms // FRAME_MS))


class Endpointer:
    """Speech start / end decisions from per-frame probabilities, with start and end hangovers, and the
    short pause at which a turn detector is asked (``"pause"``, once per pause)."""

    def __init__(self, settings: EndpointSettings | None = None) -> None:
        self.settings = settings or EndpointSettings()
        self.speaking = False
        self._run = 0  # consecutive frames arguing for a change of state
        self._frames = 0  # frames since the utterance started

    def reset(self) -> None:
        self.speaking, self._run, self._frames = False, 0, 0

    @property
    def pausing(self) -> bool:
        """Inside an utterance, in a run of non-speech frames (a pause the detector may have been asked about)."""
        return self.speaking and self._run > 0

    def finish(self) -> None:
        """End the utterance now (the turn detector said it is finished)."""
        self.speaking, self._run = False, 0

    def update(self, prob: float) -> str | None:
        """``"start"``, ``"pause"`` or ``"end"`` when this frame changes the state, else None."""
        s = self.settings
        if not self.speaking:
            self._run = self._run + 1 if prob >= s.threshold else 0
            if self._run >= s.frames(s.start_ms):
                self.speaking, self._run, self._frames = True, 0, s.frames(s.start_ms)
                return "start"
            return None
        self._frames += 1
        self._run = self._run + 1 if prob < s.release else 0
        if self._run >= s.frames(s.end_ms):
            self.speaking, self._run = False, 0
            return "end"
        if s.turn_detector and self._run == s.frames(s.turn_pause_ms) and self._frames >= s.frames(s.turn_min_ms):
            return "pause"
        return None


def speech_segments(audio16k: np.ndarray, vad: SileroVad, settings: EndpointSettings | None = None
                    ) -> list[tuple[float, float]]:
    """(start, end) seconds of each utterance the endpointer finds in a recording: the offline view of live use."""
    endpointer = Endpointer(settings)
    s = endpointer.settings
    segments: list[tuple[float, float]] = []
    start = 0.0
    for i, prob in enumerate(vad.probabilities(audio16k)):
        change = endpointer.update(prob)
        if change == "start":
            start = (i + 1 - s.frames(s.start_ms)) * FRAME / VAD_RATE
        elif change == "end":
            segments.append((start, (i + 1 - s.frames(s.end_ms)) * FRAME / VAD_RATE))
    if endpointer.speaking:
        segments.append((start, np.asarray(audio16k).size / VAD_RATE))
    return segments
