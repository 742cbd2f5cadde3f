"""A live spoken conversation: endpointing, incremental prefill, streamed playback and barge-in.

Two threads share the work. The *listener* is whoever calls ``on_audio`` (PortAudio's input
callback, or the file driver calling that same callback): it runs the VAD on 32 ms frames, decides
speech start / end, cuts the utterance into prefill chunks, and on barge-in stops the speaker at
once. The *worker* owns the model: it tokenizes each chunk and prefills it while the user is still
speaking, so at end of speech only the last chunk and the assistant prompt remain, then streams
the answer's segments to the speaker. With a turn detector, a third thread judges each short pause
(Smart Turn): the listener ends the utterance on the first frame after a "finished" verdict, unless
the user spoke again; otherwise the hangover ends it. Every turn reports the latency the user felt:
from the last voiced sample of the utterance (found on its audio) to the first answer sample out.

Barge-in keeps the history honest. Every answer segment is queued with a mark, and the speaker
reports a mark once all its samples went to the device. On interruption the worker cuts the KV
cache and ``loop.context`` back to the end of the last fully played segment and closes it with
``<audiogen_end>`` — exactly the state of an answer that ended there, so the text and audio the
user never heard are gone. When nothing was played yet, the assistant said nothing: the cut goes
back to the end of the user's audio, before ``<audio_end>``, and the new speech continues the
same user turn (a pause the endpointer took for an end).

With the published history (``generation.history``), the worker puts a generated answer in its
published form (audio re-encoded, the changed span prefilled again: ``SpeechLoop.settle_history``)
right after generating it, while it plays; a barge-in stops that work and the next turn's start
does it for what was heard, while the user speaks.

Incremental prefill tokenizes each chunk with ``tokenize_left_context_ms`` of the audio before it
and keeps only the new audio's codes (``IncrementalTokenizer``); chunk and context lengths are
whole codes (80 ms), so the code count and alignment equal whole-utterance tokenization. The
tokenizer's encoder attends over its whole window, so codes still differ from whole-utterance
tokenization: README's "Live conversation" has the measured table, tests/test_live.py its floor.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from bcaudio.runtime.audio.devices import BLOCK_MS, MIC_RATE, MicInput, SpeakerOutput
from bcaudio.runtime.audio.end_of_turn import pre_roll_frames
from bcaudio.runtime.audio.files import AudioInputError
from bcaudio.runtime.audio.turn_detector import SmartTurn
from bcaudio.runtime.audio.vad import FRAME, Endpointer, EndpointSettings, SileroVad
from bcaudio.runtime.audio.voicing import last_voiced_sample
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.speech_loop import AudioSegment, ContextFull, StreamJoiner, TextDelta, TurnEnd
from bcaudio.runtime.live.incremental_tokens import IncrementalTokenizer, whole_codes


class Phase(StrEnum):
    LISTENING = "listening"
    HEARING = "hearing"
    THINKING = "thinking"
    SPEAKING = "speaking"


@dataclass
class LiveSettings:
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)
    prefill_chunk_ms: int = 640  # a device profile's generation.prefill_chunk_ms
    tokenize_left_context_ms: int = 640  # a device profile's generation.tokenize_left_context_ms
    push_to_talk: bool = False  # press() / release() mark the utterance; no VAD
    barge_in: bool = True  # off for open speakers without echo cancellation (the mic hears the answer)
    mode: str = "respond"  # what an utterance gets: "respond" (text + speech), "text" (text only), "asr" (transcript)

    MODES = ("respond", "text", "asr")

    @property
    def chunk_samples(self) -> int:
        return whole_codes(self.prefill_chunk_ms, MIC_RATE, at_least=1)

    @property
    def left_context_samples(self) -> int:
        return whole_codes(self.tokenize_left_context_ms, MIC_RATE)


@dataclass
class TurnReport:
    """One exchange as the user experienced it: ``latency`` is the endpointer's end-of-speech decision -> first
    answer sample out; ``felt`` adds the wait before that decision, from the last voiced sample of the user's
    audio (``voicing.last_voiced_sample``), so it is what the person waited; ``ended_by`` says whether the
    hangover or the turn detector decided."""

    index: int
    user_seconds: float
    text: str
    latency: float | None
    interrupted: bool
    played_segments: int
    segments: int
    felt: float | None = None
    ended_by: str = ""


@dataclass
class PhaseChange:
    phase: Phase


@dataclass
class AssistantText:
    text: str


@dataclass
class Notice:
    message: str


@dataclass
class TurnDone:
    report: TurnReport


UiEvent = PhaseChange | AssistantText | Notice | TurnDone


@dataclass
class _Answer:
    """Bookkeeping of the answer being generated or played; offsets are relative to the turn's start."""

    index: int
    turn: int  # the speaker's turn id
    user_end: int  # after the user's last audio code, before <audio_end>
    t_end: float  # when the endpointer decided the user had finished
    user_seconds: float
    voice_gap: float | None  # seconds from the last voiced sample to that decision
    ended_by: str
    boundaries: list[int] = field(default_factory=list)  # after each segment's last frame
    texts: list[str] = field(default_factory=list)  # the text spoken by each segment
    pending_text: str = ""
    latency: float | None = None
    done: bool = False
    base: int | None = None  # a spoken text (``say``): the context before it, where a cut with nothing heard goes
    settling: bool = False  # the worker is putting this answer in its published form


class LiveSession:
    """One live conversation on a ``VoiceAssistant``; audio in through ``on_audio``, out through ``speaker``."""

    def __init__(self, assistant: VoiceAssistant, speaker: SpeakerOutput, settings: LiveSettings | None = None,
                 vad: SileroVad | None = None, ui: Callable[[UiEvent], None] = lambda _: None,
                 turn_detector: SmartTurn | None = None) -> None:
        self.assistant, self.loop, self.speaker = assistant, assistant.loop, speaker
        self.settings = settings or LiveSettings()
        self.vad = None if self.settings.push_to_talk else (vad or SileroVad())
        ep = self.settings.endpoint
        self.turn_detector = None
        if ep.turn_detector and self.vad is not None:
            self.turn_detector = turn_detector or SmartTurn(threshold=ep.turn_threshold)
        self.endpointer = Endpointer(self.settings.endpoint)
        self.ui = ui
        self.phase = Phase.LISTENING
        self.reports: list[TurnReport] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._pending = np.zeros(0, dtype=np.float32)
        ep = self.settings.endpoint
        self._pre_roll: deque[np.ndarray] = deque(maxlen=pre_roll_frames(ep))
        self._utterance: list[np.ndarray] | None = None
        self._unsent: list[np.ndarray] = []
        self._pressed = False
        self._answer: _Answer | None = None
        self._turns = 0
        self._continue_user = False
        self._dropped = False  # skip the queued rest of a turn that failed
        self._cancel = threading.Event()
        self._commands: queue.Queue[tuple] = queue.Queue()
        self._tokens = IncrementalTokenizer(assistant.tokenize, assistant.cfg, self.settings.left_context_samples)
        self.speaker.on_first_sample = self._first_sample
        self._worker = threading.Thread(target=self._work, name="bcaudio-live-worker", daemon=True)
        self._worker.start()
        # the turn detector runs on its own thread: the listener must not block, the worker is prefilling
        self._asks: queue.Queue[tuple[int, np.ndarray] | None] = queue.Queue()
        self._pause_id = 0
        self._open_pause: int | None = None  # the pause the user is in, if the detector was asked about it
        self._finished_pause: int | None = None  # the last pause the detector judged a finished turn
        self._judge_thread = None
        if self.turn_detector is not None:
            self._judge_thread = threading.Thread(target=self._judge, name="bcaudio-turn-detector", daemon=True)
            self._judge_thread.start()

    # ----- listener side -----

    def mic(self, rate: int) -> MicInput:
        """A microphone input at ``rate`` feeding this session."""
        return MicInput(self.on_audio, rate)

    def on_audio(self, samples16k: np.ndarray) -> None:
        """16 kHz mono from the microphone, any block size; VAD and endpointing run per 512-sample frame."""
        self._pending = np.concatenate([self._pending, np.asarray(samples16k, dtype=np.float32)])
        while self._pending.size >= FRAME:
            frame, self._pending = self._pending[:FRAME], self._pending[FRAME:]
            self._frame(frame)

    def press(self) -> None:
        """Push-to-talk pressed: the user starts speaking (a barge-in if the assistant is answering)."""
        if not self._pressed:
            self._pressed = True
            self._start_utterance()

    def release(self) -> None:
        """Push-to-talk released: end of speech."""
        if self._pressed:
            self._pressed = False
            self._end_utterance("push-to-talk")

    def interrupt(self) -> None:
        """Abandon whatever is in flight (a lost device): an utterance is dropped, an answer cut as by barge-in,
        except that an answer nothing of which was heard drops the whole turn (the user will ask again)."""
        if self._utterance is not None:
            self._utterance, self._unsent = None, []
            self._commands.put(("drop",))
            self._set_phase(Phase.LISTENING)
        elif self.phase in (Phase.THINKING, Phase.SPEAKING):
            self.speaker.stop()
            self._cancel.set()
            self._commands.put(("barge", False))
            self._set_phase(Phase.LISTENING)
        self._pressed = False
        self._pending = np.zeros(0, dtype=np.float32)
        self._pre_roll.clear()
        self.endpointer.reset()
        if self.vad is not None:
            self.vad.reset()

    def _frame(self, frame: np.ndarray) -> None:
        self.poll_playback()
        change = None
        if self.vad is not None:
            change = self.endpointer.update(self.vad.frame(frame))
        if self._utterance is None:
            self._pre_roll.append(frame)
        else:
            self._utterance.append(frame)
            self._unsent.append(frame)
            if sum(f.size for f in self._unsent) >= self.settings.chunk_samples:
                self._send_chunk()
        if self._utterance is not None and self.turn_detector is not None:
            change = self._turn_verdict(change)
        if change == "start":
            self._start_utterance()
        elif change == "end":
            self._end_utterance("hangover")
        elif change == "turn_detector":
            self._end_utterance("turn_detector")

    def _turn_verdict(self, change: str | None) -> str | None:
        """Ask the detector at a short pause; end the utterance once it judged this pause a finished turn."""
        if not self.endpointer.pausing:
            self._open_pause = None  # speech resumed: an answer about the pause no longer applies
            return change
        if change == "pause":
            self._pause_id += 1
            self._open_pause = self._pause_id
            self._asks.put((self._pause_id, np.concatenate(self._utterance)))
        elif change is None and self._open_pause is not None and self._finished_pause == self._open_pause:
            self.endpointer.finish()
            return "turn_detector"
        return change

    def _judge(self) -> None:
        while True:
            ask = self._asks.get()
            try:
                if ask is None:
                    return
                pause, audio = ask
                if self.turn_detector.finished(audio):
                    self._finished_pause = pause
            except Exception as exc:  # the hangover still ends the turn; say why the detector did not
                self.errors.append(f"turn detector: {type(exc).__name__}: {exc}")
                self._notice(f"turn detector failed ({type(exc).__name__}: {exc}); the hangover ends turns")
            finally:
                self._asks.task_done()

    def _send_chunk(self) -> None:
        audio = np.concatenate(self._unsent)
        size = self.settings.chunk_samples
        self._commands.put(("chunk", audio[:size]))
        self._unsent = [audio[size:]] if audio.size > size else []

    def _set_phase(self, phase: Phase) -> None:
        with self._lock:
            changed, self.phase = self.phase != phase, phase
        if changed:
            self.ui(PhaseChange(phase))

    def _start_utterance(self) -> None:
        if self.phase in (Phase.THINKING, Phase.SPEAKING):
            if not self.settings.barge_in:
                return
            self.speaker.stop()  # silence from the next output block on
            self._cancel.set()
            self._commands.put(("barge", True))
        self._utterance = list(self._pre_roll)
        self._unsent = list(self._pre_roll)
        self._pre_roll.clear()
        self._open_pause = None
        self._commands.put(("start",))
        self._set_phase(Phase.HEARING)
        while sum(f.size for f in self._unsent) >= self.settings.chunk_samples:
            self._send_chunk()

    def end_utterance(self, by: str = "front_end") -> None:
        """End the utterance now, as the endpointer would (a front end's commit, or its limit on one turn's audio)."""
        self._end_utterance(by)

    def say(self, text: str) -> None:
        """Speak ``text`` (TTS) as the next answer; call it while listening (the speech loop's ``speak``)."""
        self._set_phase(Phase.THINKING)
        self._commands.put(("say", text, time.perf_counter()))

    def run_on_worker(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the worker between commands: the worker owns the model, so settings change there."""
        self._commands.put(("call", fn))

    def reset_conversation(self) -> None:
        """The next customer: stop what is in flight and forget the whole conversation."""
        self.interrupt()
        self._commands.put(("reset",))

    def _end_utterance(self, by: str) -> None:
        if self._utterance is None:
            return
        t_end = time.perf_counter()
        audio = np.concatenate(self._unsent) if self._unsent else np.zeros(0, np.float32)
        heard = np.concatenate(self._utterance)
        voiced = last_voiced_sample(heard)
        gap = None if voiced is None else (heard.size - voiced) / MIC_RATE
        self._utterance, self._unsent = None, []
        self._set_phase(Phase.THINKING)
        self._commands.put(("end", audio, t_end, heard.size / MIC_RATE, gap, by))

    def poll_playback(self) -> None:
        """The answer is over once generated and played out: report it and listen again. Every microphone frame
        polls; a front end whose audio pauses (push-to-talk over a network) calls it on a timer. The worker may
        still be putting the answer in its published form; new speech then waits for that, as a new turn."""
        with self._lock:
            answer = self._answer
            over = (answer is not None and answer.done and self.phase in (Phase.THINKING, Phase.SPEAKING)
                    and not self.speaker.busy and self._commands.unfinished_tasks == int(answer.settling))
            if over:
                self._answer = None
        if over:
            self._report(answer, interrupted=False, played=len(answer.boundaries))
            self._set_phase(Phase.LISTENING)

    def _first_sample(self) -> None:
        answer = self._answer
        if answer is not None and answer.latency is None:
            answer.latency = time.perf_counter() - answer.t_end
        if self.phase == Phase.THINKING:
            self._set_phase(Phase.SPEAKING)

    def _report(self, answer: _Answer, interrupted: bool, played: int) -> None:
        felt = None if answer.latency is None or answer.voice_gap is None else answer.latency + answer.voice_gap
        # an answer heard to its end keeps its last text step too, shown but not spoken (after the last round)
        text = "".join(answer.texts[:played]) + ("" if interrupted else answer.pending_text)
        report = TurnReport(answer.index, answer.user_seconds, text.strip(),
                            answer.latency, interrupted, played, len(answer.boundaries), felt, answer.ended_by)
        self.reports.append(report)
        self.ui(TurnDone(report))

    # ----- worker side -----

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued command (and any answer being generated) is done; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._commands.unfinished_tasks or self._asks.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    @property
    def idle(self) -> bool:
        """Nothing heard, computed or played is pending."""
        return (self._commands.unfinished_tasks == 0 and self._asks.unfinished_tasks == 0 and self._utterance is None
                and not self.speaker.busy and self._answer is None)

    def close(self) -> None:
        """Stop playback and the worker; the conversation's state stays readable."""
        self.speaker.stop()
        self._cancel.set()
        self._commands.put(("quit",))
        self._worker.join(timeout=10)
        if self._judge_thread is not None:
            self._asks.put(None)
            self._judge_thread.join(timeout=10)

    def _work(self) -> None:
        while True:
            command = self._commands.get()
            try:
                if command[0] == "quit":
                    return
                self._handle(command)
            except (AudioInputError, ContextFull) as exc:
                self._notice(f"turn dropped: {str(exc) or 'the turn does not fit the context window'}")
                self._drop_turn()
            except Exception as exc:  # a live session outlives one bad turn; the message says what broke
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self._notice(f"turn failed ({type(exc).__name__}: {exc}); listening again")
                self._drop_turn()
            finally:
                self._commands.task_done()

    def _notice(self, message: str) -> None:
        self.ui(Notice(message))

    def _drop_turn(self) -> None:
        """Forget the current turn entirely, so the conversation stays consistent after a failure."""
        if self.loop.turn_starts:
            self.loop.truncate(self.loop.turn_starts[-1])
        self._continue_user = False
        self._dropped = True
        with self._lock:
            self._answer = None
            answering = self.phase in (Phase.THINKING, Phase.SPEAKING)
        if answering:
            self._set_phase(Phase.LISTENING)

    def _handle(self, command: tuple) -> None:
        kind = command[0]
        if self._dropped and kind not in ("start", "say", "call", "reset"):
            return  # the rest of a dropped turn
        if kind == "call":
            command[1]()
        elif kind == "reset":
            self.assistant.reset()
            self._tokens.reset()
            self._continue_user, self._dropped = False, False
        elif kind == "say":
            self._dropped = False
            self._say(command[1], command[2])
        elif kind == "start":
            self._dropped = False
            self._tokens.reset()
            if not self._continue_user:
                self.loop.start_user_audio(asr=self.settings.mode == "asr")
            self._continue_user = False
        elif kind == "chunk":
            self.loop.add_user_audio(self._tokens.push(command[1]))
        elif kind == "end":
            _, tail, t_end, seconds, gap, by = command
            self.loop.add_user_audio(self._tokens.push(tail))  # none when the tail holds less than one code
            self._respond(t_end, seconds, gap, by)
        elif kind == "barge":
            self._barge(continue_user=command[1])
        elif kind == "drop":
            self._drop_turn()

    def _offset(self) -> int:
        return len(self.loop.context) - self.loop.turn_starts[-1]

    def _respond(self, t_end: float, seconds: float, gap: float | None, by: str) -> None:
        self._turns += 1
        answer = _Answer(self._turns, self.speaker.begin_turn(), self._offset(), t_end, seconds, gap, by)
        with self._lock:
            self._answer = answer
        if not self._cancel.is_set():
            answers = {"respond": self.loop.guarded_answer, "text": self.loop.guarded_answer_text,
                       "asr": self.loop.guarded_transcript}
            self._stream(answer, answers[self.settings.mode]())
        answer.settling = not self._cancel.is_set()
        answer.done = True
        if answer.settling:  # while the answer plays; stopped by a barge-in, which redoes it for what was heard
            self.loop.settle_history(cancelled=self._cancel.is_set)
            answer.settling = False

    def _say(self, text: str, t_start: float) -> None:
        self._turns += 1
        answer = _Answer(self._turns, self.speaker.begin_turn(), 0, t_start, 0.0, None, "text",
                         base=len(self.loop.context))
        with self._lock:
            self._answer = answer
        if not self._cancel.is_set():
            self._stream(answer, self.loop.speak(text))
        answer.done = True

    def _stream(self, answer: _Answer, events: Iterator) -> None:
        joiner = StreamJoiner(self.assistant.cfg.generation.crossfade_samples)
        try:
            for event in events:
                if self._cancel.is_set():
                    return
                if isinstance(event, TextDelta) and event.text:
                    answer.pending_text += event.text
                    self.ui(AssistantText(event.text))
                elif isinstance(event, AudioSegment):
                    answer.boundaries.append(event.end - self.loop.turn_starts[-1])
                    answer.texts.append(answer.pending_text)
                    answer.pending_text = ""
                    self.speaker.enqueue(answer.turn, joiner.push(event.waveform),
                                         mark=(answer.turn, len(answer.boundaries)))
                elif isinstance(event, TurnEnd):
                    self.speaker.enqueue(answer.turn, joiner.flush(), last=True)
                    if event.reason not in ("eos", "max_rounds"):
                        self._notice(f"answer ended early: {event.reason}")
        finally:
            if hasattr(events, "close"):
                events.close()

    def _barge(self, continue_user: bool) -> None:
        """Cut the history back to what the user heard (see the module docstring); with nothing heard, new
        speech continues the user's turn when ``continue_user``, else the turn is forgotten."""
        with self._lock:
            answer, self._answer = self._answer, None
        self._cancel.clear()
        if answer is None:
            return
        played = sum(1 for turn, _ in self._played_marks() if turn == answer.turn)
        start = self.loop.turn_starts[-1]
        if played == 0 and answer.base is not None:
            self.loop.truncate(answer.base)
        elif played == 0:
            self.loop.truncate(start + answer.user_end if continue_user else start)
            self._continue_user = continue_user
        elif not (answer.done and played == len(answer.boundaries)):
            self.loop.interrupt_at(start + answer.boundaries[played - 1], heard=played)
        self._report(answer, interrupted=True, played=played)

    def _played_marks(self) -> list[tuple[int, int]]:
        return [m for m in self.speaker.played if isinstance(m, tuple)]


def drive_from_audio(session: LiveSession, audio: np.ndarray, rate: int, realtime: bool = False,
                     tail_seconds: float = 30.0, out: list[np.ndarray] | None = None) -> np.ndarray:
    """Play a recording into the session as a microphone would and record what the speaker plays.

    Blocks of ``BLOCK_MS`` go through the microphone callback; after each, one block of output is
    pulled, so the returned audio (at ``session.speaker.rate``) lines up with the input in time.
    Faster than real time, each block waits for the model to finish its work: the model then
    costs no simulated time and the run is deterministic. After the input, silence is fed until
    the last answer has played (at most ``tail_seconds``). Each output block is also appended to
    ``out`` as it is pulled, so a caller stopped by Ctrl-C keeps what was played until then.
    """
    mic = session.mic(rate)
    speaker = session.speaker
    block, out_block = rate * BLOCK_MS // 1000, speaker.rate * BLOCK_MS // 1000
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    silence = np.zeros(block, dtype=np.float32)
    out = [] if out is None else out
    start = time.perf_counter()
    blocks, extra = -(-audio.size // block), int(tail_seconds * 1000 / BLOCK_MS)
    for i in range(blocks + extra):
        piece = audio[i * block:(i + 1) * block] if i < blocks else silence
        if i >= blocks and session.idle:
            break
        mic.callback(np.pad(piece, (0, block - piece.size))[:, None], block, None, None)
        if not realtime:
            session.wait_idle()
        out.append(speaker.pull(out_block))
        if realtime:
            time.sleep(max(0.0, start + (i + 1) * BLOCK_MS / 1000 - time.perf_counter()))
    return np.concatenate(out) if out else np.zeros(0, np.float32)
