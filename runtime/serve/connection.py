"""One WebSocket client's conversation: protocol events in, ``LiveSession`` events out as protocol events.

The conversation logic is ``bcaudio chat``'s (runtime/live/conversation.py): server-side VAD and
endpointing, incremental tokenize + prefill while the user speaks, barge-in that keeps only what was
heard. The speaker is the client (``RemoteSpeaker``), and the model is shared: every graph run goes
through this connection's lane of the server's compute queues.

``emit`` is called from the listener, the worker and the event loop alike; the app makes it thread-safe.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bcaudio.runtime.audio.vad import FRAME_MS, SileroVad
from bcaudio.runtime.live.conversation import (
    AssistantText,
    LiveSession,
    Notice,
    Phase,
    PhaseChange,
    TurnDone,
    UiEvent,
)
from bcaudio.runtime.serve.model import SharedModel
from bcaudio.runtime.serve.protocol import (
    INPUT_RATE,
    Limits,
    ProtocolError,
    SessionConfig,
    apply_update,
    decode_pcm16,
    encode_pcm16,
    vad_config,
)
from bcaudio.runtime.serve.remote_speaker import RemoteSpeaker

Emit = Callable[[dict[str, Any]], None]


@dataclass
class _Response:
    id: str
    t_end: float  # end of speech as the endpointer (or the commit) decided it
    hangover_ms: float
    user_seconds: float
    cancelled: bool = False
    first_text: float | None = None
    first_audio: float | None = None
    last_output: float | None = None
    audio_samples: int = 0
    text: list[str] = field(default_factory=list)

    def output(self, now: float, samples: int = 0, text: str | None = None) -> None:
        """A piece of the answer (audio, or ``text``) went out at ``now``."""
        if text is None:
            self.first_audio = self.first_audio or now
            self.audio_samples += samples
        else:
            self.first_text = self.first_text or now
            self.text.append(text)
        self.last_output = now


@dataclass
class TurnSummary:
    """What ``response.done`` reports and the metrics observe."""

    status: str
    timings: dict[str, float | None]
    rtf: float | None


class Connection:
    """A client's session on the shared model; ``handle`` takes parsed client events."""

    _ids = itertools.count(1)

    def __init__(self, model: SharedModel, emit: Emit, limits: Limits, on_turn: Callable[[TurnSummary], None]
                 = lambda _: None, on_error: Callable[[str], None] = lambda _: None) -> None:
        self.model, self.emit, self.limits = model, emit, limits
        self.on_turn, self.on_error = on_turn, on_error
        self.id = next(self._ids)
        self.lane = model.scheduler.lane()
        self.assistant = model.assistant(self.lane, seed=self.id)
        self.base_live = model.live_settings()
        self.speaker = RemoteSpeaker(self._send_audio, self.assistant.sample_rate)
        ep = self.base_live.endpoint
        vad = vad_config(ep.threshold, ep.pre_roll_ms, ep.end_ms, ep.turn_detector)
        self.config = SessionConfig(instructions=self.assistant.loop.gen.system_prompt, turn_detection=vad)
        self._base_gen = self.assistant.loop.gen
        self._lock = threading.Lock()
        self._response: _Response | None = None
        self._responses = itertools.count(1)
        self._utterance_samples = 0
        self._pressed = False
        self.closed = False
        self.session = self._live_session()

    # ----- setup -----

    def _live_session(self) -> LiveSession:
        td = self.config.turn_detection
        endpoint = self.base_live.endpoint
        if td is not None:
            endpoint = dataclasses.replace(endpoint, threshold=td["threshold"],
                                           release=min(endpoint.release, td["threshold"]),
                                           end_ms=td["silence_duration_ms"], pre_roll_ms=td["prefix_padding_ms"],
                                           turn_detector=td["turn_detector"])
        mode = "text" if self.config.mode == "respond" and not self.config.voice else self.config.mode
        settings = dataclasses.replace(self.base_live, endpoint=endpoint, push_to_talk=td is None,
                                       mode="respond" if mode == "tts" else mode)
        vad = SileroVad(self.model.vad_model) if td is not None else None
        detector = self.model.turn_detector() if td is not None and td["turn_detector"] else None
        return LiveSession(self.assistant, self.speaker, settings, vad=vad, ui=self._ui, turn_detector=detector)

    def created(self) -> None:
        self.emit({"type": "session.created", "session": self.config.public(), "limits": self.limits.public(),
                   "session_id": f"sess_{self.id}"})

    # ----- client events -----

    def handle(self, event: dict[str, Any]) -> None:
        """One parsed client event; ``ProtocolError`` for one that cannot be acted on (the caller reports it)."""
        kind = event["type"]
        if kind == "input_audio_buffer.append":
            self.append(decode_pcm16(event))
        elif kind == "input_audio_buffer.commit":
            self.commit()
        elif kind == "input_audio_buffer.clear":
            if self.session.phase == Phase.HEARING:
                self.session.interrupt()
            self._pressed = False
        elif kind == "response.cancel":
            self.cancel()
        elif kind == "response.create":
            self.speak(event)
        elif kind == "conversation.reset":
            self.session.reset_conversation()
            self._pressed = False
            self.session.run_on_worker(lambda: self.emit({"type": "conversation.reset.done"}))
        elif kind == "session.update":
            self.update(event.get("session"))

    def append(self, samples: np.ndarray) -> None:
        if self.config.mode == "tts":
            raise ProtocolError("invalid_state", "mode tts speaks the text of response.create; switch the mode to "
                                "respond, text or asr to send audio")
        if self.config.turn_detection is None and not self._pressed:
            self._pressed = True
            self.session.press()  # push-to-talk: audio after a commit starts the next utterance (a barge-in too)
        if self.session.phase == Phase.HEARING:
            self._utterance_samples += samples.size
            if self._utterance_samples > self.limits.max_turn_seconds * INPUT_RATE:
                self.session.end_utterance("turn_limit")
                self.emit_error("turn_too_long", f"an utterance is at most {self.limits.max_turn_seconds:g} s; "
                                "it was ended there and is being answered")
        self.session.on_audio(samples)

    def commit(self) -> None:
        """End of the utterance: push-to-talk's release, or an early end with server VAD."""
        if self.config.turn_detection is None:
            if self._pressed:
                self._pressed = False
                self.session.release()
            return
        if self.session.phase == Phase.HEARING:
            self.session.end_utterance("commit")

    def cancel(self) -> None:
        with self._lock:
            response = self._response
            if response is not None:
                response.cancelled = True
        if self.session.phase in (Phase.THINKING, Phase.SPEAKING):
            self.session.interrupt()

    def speak(self, event: dict[str, Any]) -> None:
        text = event.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > self.limits.max_text_chars:
            raise ProtocolError("invalid_event", f'response.create needs "text": 1 to {self.limits.max_text_chars} '
                                "characters to speak")
        if self.session.phase != Phase.LISTENING:
            raise ProtocolError("invalid_state", f"the session is {self.session.phase.value}; send response.create "
                                "while listening (response.cancel stops an answer)")
        self.session.say(text)

    def update(self, raw: Any) -> None:
        new = apply_update(self.config, raw, self.limits)
        old, self.config = self.config, new
        rebuild = (old.turn_detection, old.mode, old.voice) != (new.turn_detection, new.mode, new.voice)
        if rebuild:
            self.session.close()
            self._pressed = False
            self.session = self._live_session()
        if (old.temperature, old.top_p, old.top_k) != (new.temperature, new.top_p, new.top_k):
            self.session.run_on_worker(self._apply_sampling)
        if old.instructions != new.instructions:
            self.session.reset_conversation()  # the system prompt opens the KV cache: a new one starts over
            self.session.run_on_worker(self._apply_instructions)
        self.session.run_on_worker(lambda: self.emit({"type": "session.updated", "session": new.public()}))

    def _apply_sampling(self) -> None:
        gen = dataclasses.replace(self._base_gen, system_prompt=self.assistant.loop.gen.system_prompt)
        for phase in ("first_text", "text", "text_only", "audio"):
            params = dataclasses.replace(getattr(gen, phase))
            if self.config.temperature is not None:
                params.temperature = float(self.config.temperature)
            if self.config.top_p is not None and phase != "audio":
                params.top_p = float(self.config.top_p)
            if self.config.top_k is not None and phase != "audio":
                params.top_k = int(self.config.top_k)
            setattr(gen, phase, params)
        self.assistant.loop.gen = gen

    def _apply_instructions(self) -> None:
        self.assistant.loop.gen = dataclasses.replace(self.assistant.loop.gen, system_prompt=self.config.instructions)

    def poll(self) -> None:
        """Notice an answer that has finished playing although no audio arrives (push-to-talk between turns)."""
        if not self.closed:
            self.session.poll_playback()

    def close(self) -> None:
        """The client is gone: its queued work is dropped now, the worker stops after the step it is in."""
        self.closed = True
        self.lane.close()
        self.assistant.close()  # its batch row: a waiting step fails now, the row is free after the run in flight
        self.session.close()

    # ----- session events -> protocol events -----

    def emit_error(self, code: str, message: str) -> None:
        self.on_error(code)
        self.emit({"type": "error", "error": {"code": code, "message": message}})

    def _output(self, samples: int = 0, text: str | None = None) -> _Response | None:
        """Record a piece of the current answer going out; None when there is no answer (it was stopped)."""
        now = time.perf_counter()
        with self._lock:
            if self._response is not None:
                self._response.output(now, samples, text)
            return self._response

    def _send_audio(self, samples: np.ndarray) -> None:
        response = self._output(samples=samples.size)
        if response is not None:
            self.emit({"type": "response.audio.delta", "response_id": response.id, "delta": encode_pcm16(samples),
                       "samples": int(samples.size)})

    def _ui(self, event: UiEvent) -> None:
        if self.closed:
            return
        if isinstance(event, PhaseChange):
            self._phase(event.phase)
        elif isinstance(event, AssistantText):
            response = self._output(text=event.text)
            if response is not None:
                self.emit({"type": "response.text.delta", "response_id": response.id, "delta": event.text})
        elif isinstance(event, Notice):
            self._notice(event.message)
        elif isinstance(event, TurnDone):
            self._done(event.report)

    def _phase(self, phase: Phase) -> None:
        self.emit({"type": "session.state", "state": phase.value})
        if phase == Phase.HEARING:
            self._utterance_samples = 0
            self.emit({"type": "input_audio_buffer.speech_started"})
        elif phase == Phase.THINKING:
            td = self.config.turn_detection
            hangover = 0.0
            if td is not None and self.session.endpointer is not None and self._utterance_samples:
                ep = self.session.endpointer.settings
                hangover = float(ep.frames(ep.end_ms) * FRAME_MS)
            response = _Response(f"resp_{self.id}_{next(self._responses)}", time.perf_counter(), hangover,
                                 self._utterance_samples / INPUT_RATE)
            with self._lock:
                self._response = response
            if self._utterance_samples:
                self.emit({"type": "input_audio_buffer.speech_stopped",
                           "audio_ms": round(1000 * self._utterance_samples / INPUT_RATE)})
            self._utterance_samples = 0
            self.emit({"type": "response.created", "response_id": response.id})

    def _notice(self, message: str) -> None:
        if message.startswith("answer ended early"):
            self.emit_error("answer_truncated", message)
            return
        self.emit_error("turn_failed", message)
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            self.emit({"type": "response.done", "response_id": response.id, "status": "failed", "text": "",
                       "timings": {}})

    def _done(self, report: Any) -> None:
        with self._lock:
            response, self._response = self._response, None
        if response is None:
            return
        status = "cancelled" if response.cancelled else "interrupted" if report.interrupted else "completed"

        def since_end(t: float | None) -> float | None:
            return None if t is None else round(1000 * (t - response.t_end), 1)

        first_audio = since_end(response.first_audio)
        generated = None if response.last_output is None else response.last_output - response.t_end
        answer_seconds = response.audio_samples / self.assistant.sample_rate
        # the wait before the end-of-speech decision, measured from the last voiced sample found on the audio
        gap = None if report.felt is None or report.latency is None else round(1000 * (report.felt - report.latency))
        felt = None if first_audio is None else round(first_audio + (response.hangover_ms if gap is None else gap), 1)
        timings = {"vad_hangover_ms": response.hangover_ms, "voice_gap_ms": gap,
                   "first_text_ms": since_end(response.first_text), "first_audio_ms": first_audio,
                   "generated_ms": since_end(response.last_output), "total_ms": since_end(time.perf_counter()),
                   "felt_first_audio_ms": felt, "user_audio_ms": round(1000 * response.user_seconds),
                   "answer_audio_ms": round(1000 * answer_seconds)}
        rtf = generated / answer_seconds if generated is not None and answer_seconds else None
        spoken = self.config.voice and self.config.mode in ("respond", "tts")
        text = report.text if spoken else "".join(response.text).strip()  # text modes: what was shown was "heard"
        self.emit({"type": "response.done", "response_id": response.id, "status": status, "text": text,
                   "played_segments": report.played_segments, "segments": report.segments,
                   "ended_by": report.ended_by, "timings": timings})
        self.on_turn(TurnSummary(status, timings, rtf))
