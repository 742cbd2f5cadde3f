"""The WebSocket protocol's messages (docs/protocol.md): parsing client events, encoding audio, error codes.

Every client message is one JSON object with a ``type``; anything else is a ``ProtocolError`` whose
code and one-line message go back as an ``error`` event, and the connection stays open.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

INPUT_RATE = 16000
OUTPUT_RATE = 24000
MODES = ("respond", "text", "asr", "tts")

CLIENT_EVENTS = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                 "input_audio_buffer.clear", "response.create", "response.cancel", "conversation.reset")


class ProtocolError(ValueError):
    """A message the server cannot act on; ``code`` is stable, the message says what to send instead."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Limits:
    """What one connection may send; each is a refusal with its own error code, never a hang or a crash."""

    max_message_bytes: int = 256 * 1024  # one append of 0.25 MiB is 8 s of 16 kHz PCM16 in base64
    max_turn_seconds: float = 30.0  # one utterance's audio; past it the turn is ended as if the user stopped
    max_text_chars: int = 2000  # instructions, or a text to speak
    idle_timeout: float = 300.0  # seconds without a message before the server closes the connection

    def public(self) -> dict[str, Any]:
        return {"max_message_bytes": self.max_message_bytes, "max_turn_seconds": self.max_turn_seconds,
                "max_text_chars": self.max_text_chars, "idle_timeout_s": self.idle_timeout}


def parse_event(raw: str | bytes, limits: Limits) -> dict[str, Any]:
    """One client message -> its event object, checked for size, JSON, an object and a known type."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > limits.max_message_bytes:
        raise ProtocolError("message_too_large", f"message of {size} bytes is over the limit of "
                            f"{limits.max_message_bytes}; send audio in smaller appends (20-100 ms each)")
    if isinstance(raw, bytes):
        raise ProtocolError("binary_not_supported", "binary frames are not accepted; send JSON text events "
                            "(audio as base64 PCM16 in input_audio_buffer.append)")
    try:
        event = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"message is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError("invalid_event", 'an event is a JSON object with a string "type"')
    if event["type"] not in CLIENT_EVENTS:
        raise ProtocolError("unknown_event", f"unknown event type {event['type'][:60]!r}; "
                            f"known: {', '.join(CLIENT_EVENTS)}")
    return event


def decode_pcm16(event: dict[str, Any]) -> np.ndarray:
    """``input_audio_buffer.append``'s ``audio`` (base64 of 16 kHz mono PCM16 little-endian) -> float32."""
    data = event.get("audio")
    if not isinstance(data, str):
        raise ProtocolError("invalid_audio", 'input_audio_buffer.append needs "audio": base64 of 16 kHz mono PCM16')
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_audio", '"audio" is not valid base64') from None
    if len(raw) % 2:
        raise ProtocolError("invalid_audio_format", f"audio of {len(raw)} bytes is not 16-bit samples; send mono "
                            "PCM16 little-endian at 16 kHz (an even number of bytes)")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def encode_pcm16(samples: np.ndarray) -> str:
    """float32 in [-1, 1] -> base64 of PCM16 little-endian (what ``response.audio.delta`` carries)."""
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float32) * 32767.0), -32768, 32767).astype("<i2")
    return base64.b64encode(pcm.tobytes()).decode("ascii")


@dataclass
class SessionConfig:
    """What ``session.update`` may set; ``public`` is what ``session.created`` / ``session.updated`` report."""

    instructions: str
    mode: str = "respond"
    voice: bool = True
    turn_detection: dict[str, Any] | None = None  # {"type": "server_vad", ...}; None: push-to-talk
    temperature: float | None = None  # None: the package's per-phase defaults
    top_p: float | None = None
    top_k: int | None = None

    def public(self) -> dict[str, Any]:
        return {"instructions": self.instructions, "mode": self.mode, "voice": self.voice,
                "turn_detection": self.turn_detection, "input_audio_format": "pcm16",
                "input_sample_rate": INPUT_RATE, "output_audio_format": "pcm16", "output_sample_rate": OUTPUT_RATE,
                "sampling": {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}}


DEFAULT_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 256, "silence_duration_ms": 640,
               "turn_detector": False}


def vad_config(threshold: float, prefix_padding_ms: int, silence_duration_ms: int, turn_detector: bool
               ) -> dict[str, Any]:
    """``turn_detection`` as the protocol shows it (the device profile's ``[endpoint]`` gives the defaults)."""
    return {"type": "server_vad", "threshold": threshold, "prefix_padding_ms": prefix_padding_ms,
            "silence_duration_ms": silence_duration_ms, "turn_detector": turn_detector}


def apply_update(config: SessionConfig, update: Any, limits: Limits) -> SessionConfig:
    """A new config from ``session.update``'s ``session`` object; unknown keys and bad values are refused whole."""
    if not isinstance(update, dict):
        raise ProtocolError("invalid_session", 'session.update needs "session": an object of settings')
    known = {"instructions", "mode", "voice", "turn_detection", "sampling", "input_audio_format",
             "input_sample_rate"}
    unknown = sorted(set(update) - known)
    if unknown:
        raise ProtocolError("invalid_session", f"unknown session setting(s) {unknown[:5]}; known: {sorted(known)}")
    fmt, rate = update.get("input_audio_format", "pcm16"), update.get("input_sample_rate", INPUT_RATE)
    if fmt != "pcm16" or rate != INPUT_RATE:
        raise ProtocolError("invalid_audio_format", f"input audio {fmt!r} at {rate!r} Hz is not supported; send "
                            f"pcm16 at {INPUT_RATE} Hz (resample on the client)")
    new = SessionConfig(**{**config.__dict__})
    if "instructions" in update:
        text = update["instructions"]
        if not isinstance(text, str) or not text.strip() or len(text) > limits.max_text_chars:
            raise ProtocolError("invalid_session", f"instructions must be a non-empty string of at most "
                                f"{limits.max_text_chars} characters")
        new.instructions = text
    if "mode" in update:
        if update["mode"] not in MODES:
            raise ProtocolError("invalid_session", f"mode {update['mode']!r}; choose one of {', '.join(MODES)}")
        new.mode = update["mode"]
    if "voice" in update:
        if not isinstance(update["voice"], bool):
            raise ProtocolError("invalid_session", '"voice" is true or false')
        new.voice = update["voice"]
    if "turn_detection" in update:
        new.turn_detection = _turn_detection(update["turn_detection"], config.turn_detection or DEFAULT_VAD)
    if "sampling" in update:
        _sampling(new, update["sampling"])
    return new


def _turn_detection(value: Any, base: dict[str, Any]) -> dict[str, Any] | None:
    """Settings not given keep ``base``'s (the current ones)."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") != "server_vad":
        raise ProtocolError("invalid_session", 'turn_detection is null (push-to-talk) or {"type": "server_vad", ...}')
    out = dict(base)
    for key, value_ in value.items():
        if key == "type":
            continue
        if key not in DEFAULT_VAD:
            raise ProtocolError("invalid_session", f"unknown turn_detection setting {key!r}; known: "
                                f"{', '.join(k for k in DEFAULT_VAD if k != 'type')}")
        if key == "turn_detector":
            if not isinstance(value_, bool):
                raise ProtocolError("invalid_session", "turn_detection.turn_detector is true or false")
            out[key] = value_
            continue
        ok = (0 < value_ < 1) if key == "threshold" else (isinstance(value_, int) and 32 <= value_ <= 5000)
        if isinstance(value_, bool) or not isinstance(value_, int | float) or not ok:
            raise ProtocolError("invalid_session", f"turn_detection.{key} = {value_!r} is out of range "
                                "(threshold in (0, 1); durations 32-5000 ms)")
        out[key] = value_
    return out


def _sampling(config: SessionConfig, value: Any) -> None:
    if not isinstance(value, dict) or set(value) - {"temperature", "top_p", "top_k"}:
        raise ProtocolError("invalid_session", 'sampling is an object of "temperature" (>= 0, 0 is greedy), '
                            '"top_p" (0-1], "top_k" (>= 0)')
    t, p, k = value.get("temperature", config.temperature), value.get("top_p", config.top_p), \
        value.get("top_k", config.top_k)
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 5):
        raise ProtocolError("invalid_session", f"sampling.temperature = {t!r}; use 0 (greedy) to 5")
    if p is not None and (isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1):
        raise ProtocolError("invalid_session", f"sampling.top_p = {p!r}; use a number in (0, 1]")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ProtocolError("invalid_session", f"sampling.top_k = {k!r}; use an integer >= 0")
    config.temperature, config.top_p, config.top_k = t, p, k
