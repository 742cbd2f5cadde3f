"""Microphone and speaker through sounddevice (PortAudio), kept apart from the conversation logic.

``MicInput`` and ``SpeakerOutput`` are plain objects whose ``callback`` methods are what PortAudio
calls; the file-driven mode and the tests call the very same methods, so the headless path
exercises the code a live microphone runs. Device problems (none, busy, lost) become one-line
``AudioDeviceError`` messages: the conversation survives them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MIC_RATE = 16000
BLOCK_MS = 20  # PortAudio block: barge-in stops output within one such block


class AudioDeviceError(RuntimeError):
    """No device, a busy device or a lost device; the message says what to do."""


class AudioBackendMissing(AudioDeviceError):
    """sounddevice or PortAudio is not installed: waiting for a device cannot help."""


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio shared library is missing
        raise AudioBackendMissing(f"PortAudio is not available ({exc}); apt-get install libportaudio2") from None
    except ImportError:
        raise AudioBackendMissing("sounddevice is not installed: pip install sounddevice "
                               "(or use --input-wav/--output-wav)") from None
    return sounddevice


def _describe(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160]


@dataclass
class Device:
    index: int
    name: str
    host_api: str
    inputs: int
    outputs: int
    rate: int


def list_devices() -> list[Device]:
    """Every PortAudio device with its channel counts and native rate (empty with no sound card)."""
    sd = _sounddevice()
    try:
        raw = sd.query_devices()
        apis = sd.query_hostapis()
    except sd.PortAudioError as exc:
        raise AudioDeviceError(f"cannot list audio devices ({_describe(exc)})") from None
    return [Device(d["index"], d["name"], apis[d["hostapi"]]["name"], d["max_input_channels"],
                   d["max_output_channels"], int(d["default_samplerate"])) for d in raw]


def devices_report() -> str:
    """What ``bcaudio devices`` prints: input and output devices, defaults marked, and ORT providers."""
    import onnxruntime as ort

    lines = []
    try:
        devices = list_devices()
        sd = _sounddevice()
        default_in, default_out = (int(i) for i in sd.default.device)
    except AudioDeviceError as exc:
        devices, default_in, default_out = [], -1, -1
        lines.append(f"audio: {exc}")
    for kind, attr, default in (("input", "inputs", default_in), ("output", "outputs", default_out)):
        found = [d for d in devices if getattr(d, attr) > 0]
        lines.append(f"{kind} devices:" + ("" if found else " none (use --input-wav / --output-wav)"))
        for d in found:
            mark = "*" if d.index == default else " "
            lines.append(f" {mark}{d.index:3d}  {d.name}  ({d.host_api}, {getattr(d, attr)} ch, {d.rate} Hz)")
    lines.append("onnxruntime providers: " + ", ".join(ort.get_available_providers()))
    return "\n".join(lines)


def _resolve(device: str | int | None, kind: str) -> tuple[int | str | None, int]:
    """The device PortAudio should open and its native rate; a clear error when there is none."""
    sd = _sounddevice()
    spec: int | str | None = int(device) if isinstance(device, str) and device.isdigit() else device
    try:
        info = sd.query_devices(spec, kind=kind)
    except (sd.PortAudioError, ValueError) as exc:
        what = f"{kind} device {device!r}" if device is not None else f"default {kind} device"
        raise AudioDeviceError(f"no {what} ({_describe(exc)}); see `bcaudio devices`, pick one with "
                               f"--{kind}-device, or use --{kind}-wav") from None
    return spec, int(info["default_samplerate"])


class MicInput:
    """Microphone blocks at the device rate -> mono 16 kHz handed to ``sink`` (streaming soxr, no block seams)."""

    def __init__(self, sink: Callable[[np.ndarray], None], rate: int) -> None:
        import soxr

        self.sink, self.rate = sink, rate
        self._resampler = soxr.ResampleStream(rate, MIC_RATE, 1, dtype="float32") if rate != MIC_RATE else None
        self.overflows = 0

    def callback(self, indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        """PortAudio's input callback (also called by the file driver with file blocks)."""
        if status and getattr(status, "input_overflow", False):
            self.overflows += 1
        block = np.asarray(indata, dtype=np.float32)
        mono = block.mean(axis=1) if block.ndim == 2 else block
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(np.ascontiguousarray(mono))
        if mono.size:
            self.sink(mono)


class SpeakerOutput:
    """A queue of answer audio that the output callback drains block by block.

    Segments carry marks; a mark counts as played once every sample before it has been handed
    to the device, which is what barge-in keeps in the history. ``stop`` empties the queue, so
    the next block is silence: playback stops within one block. Audio of a stopped turn that
    arrives late is dropped.
    """

    def __init__(self, source_rate: int, rate: int | None = None) -> None:
        import soxr

        self.source_rate, self.rate = source_rate, rate or source_rate
        self._soxr = soxr
        self._resampler = self._new_resampler()
        self._lock = threading.Lock()
        self._queue: deque[tuple[np.ndarray, Any]] = deque()
        self._turn = 0
        self.played: list[Any] = []  # marks reached, in order
        self.on_first_sample: Callable[[], None] | None = None  # called once per turn, from the output callback
        self._first_pending = False

    def _new_resampler(self) -> Any:
        if self.rate == self.source_rate:
            return None
        return self._soxr.ResampleStream(self.source_rate, self.rate, 1, dtype="float32")

    def begin_turn(self) -> int:
        """Open a new turn (the previous one is stopped) and return its id for ``enqueue``."""
        with self._lock:
            self._queue.clear()
            self._turn += 1
            self._resampler = self._new_resampler()
            self._first_pending = True
            return self._turn

    def enqueue(self, turn: int, samples: np.ndarray, mark: Any = None, last: bool = False) -> None:
        """Queue samples at ``source_rate`` of ``turn``; ``mark`` is reached once they have all been played."""
        with self._lock:
            if turn != self._turn:
                return
            samples = np.asarray(samples, dtype=np.float32)
            if self._resampler is not None:
                samples = self._resampler.resample_chunk(samples, last=last)
            self._queue.append((samples, mark))

    def stop(self) -> None:
        """Silence from the next block on; the current turn accepts no more audio."""
        with self._lock:
            self._queue.clear()
            self._turn += 1
            self._first_pending = False

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._queue)

    def pull(self, n: int) -> np.ndarray:
        """The next ``n`` samples to play (zeros where nothing is queued)."""
        out = np.zeros(n, dtype=np.float32)
        filled, first = 0, False
        with self._lock:
            while filled < n and self._queue:
                samples, mark = self._queue[0]
                take = min(n - filled, samples.size)
                out[filled:filled + take] = samples[:take]
                filled += take
                if take and self._first_pending:
                    self._first_pending, first = False, True
                if take == samples.size:
                    self._queue.popleft()
                    if mark is not None:
                        self.played.append(mark)
                else:
                    self._queue[0] = (samples[take:], mark)
        if first and self.on_first_sample is not None:
            self.on_first_sample()
        return out

    def callback(self, outdata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        """PortAudio's output callback."""
        outdata[:] = self.pull(frames)[:, None]


class DeviceStreams:
    """The PortAudio streams of a live session; notices a device that stops (unplugged) and reopens it."""

    def __init__(self, mic: Callable[[int], MicInput], speaker: SpeakerOutput, input_device: str | None,
                 output_device: str | None) -> None:
        self.make_mic, self.speaker = mic, speaker
        self.input_device, self.output_device = input_device, output_device
        self._streams: list[Any] = []
        self.lost = threading.Event()

    @staticmethod
    def output_rate(output_device: str | None, source_rate: int) -> int:
        """The answer's rate when the device takes it, else the device's native rate."""
        sd = _sounddevice()
        spec, native = _resolve(output_device, "output")
        try:
            sd.check_output_settings(device=spec, samplerate=source_rate, channels=1, dtype="float32")
        except sd.PortAudioError:
            return native
        return source_rate

    def open(self) -> None:
        """Start both streams; AudioDeviceError names the device and the fix when one cannot open."""
        sd = _sounddevice()
        self.close()
        self.lost.clear()
        in_spec, in_rate = _resolve(self.input_device, "input")
        out_spec, _ = _resolve(self.output_device, "output")
        mic = self.make_mic(in_rate)
        try:
            inp = sd.InputStream(device=in_spec, samplerate=in_rate, channels=1, dtype="float32",
                                 blocksize=in_rate * BLOCK_MS // 1000, callback=mic.callback,
                                 finished_callback=self._finished)
            out = sd.OutputStream(device=out_spec, samplerate=self.speaker.rate, channels=1, dtype="float32",
                                  blocksize=self.speaker.rate * BLOCK_MS // 1000, callback=self.speaker.callback,
                                  finished_callback=self._finished)
            self._streams = [inp, out]
            inp.start()
            out.start()
        except sd.PortAudioError as exc:
            self.close()
            raise AudioDeviceError(f"cannot open the audio device: busy or unavailable ({_describe(exc)}); "
                                   "close other programs using it or pick another with --input-device/"
                                   "--output-device") from None

    @property
    def is_open(self) -> bool:
        return bool(self._streams)

    def _finished(self) -> None:
        if self._streams:  # not closed by us: the device went away
            self.lost.set()

    def close(self) -> None:
        streams, self._streams = self._streams, []
        for stream in streams:
            try:
                stream.abort()
                stream.close()
            except Exception:  # a lost device may fail to close; it is gone either way
                pass
