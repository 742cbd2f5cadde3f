"""The text-guided interleaved generation loop of spec §8, apart from any model implementation.

A ``Backend`` owns the model state (LLM KV cache, depth cache, noise); the loop
owns the token scheme, sampling and stop rules. The torch reference and the ONNX
runtime are two backends of this one loop, so their outputs are comparable
token for token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from bcaudio.config import GenerationConfig, ModelConfig, SamplingParams
from bcaudio.runtime.audio.files import to_mono_rate
from bcaudio.runtime.generation.published_history import AnswerLog, common_prefix, published_span, published_text
from bcaudio.runtime.generation.sampling import sample_token
from bcaudio.runtime.generation.segment_stream import SegmentStream
from bcaudio.runtime.generation.source_phase import SourcePhase

ChooseCode = Callable[[int, np.ndarray], int]


class Backend(Protocol):
    def feed(self, ids: Sequence[int], codes: np.ndarray | None = None, logits: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray]:
        """Append positions to the conversation; -> (last logits (V,), last final-normed hidden (H,)).

        ``codes`` (len(ids), num_codebooks) gives the frames of ``<audio_pad>`` positions. ``logits=False``
        says the loop will not read this feed's logits (audio frames, prefills): the backend may skip the
        lm_head, the largest weight an audio frame's step would read, and gives None in their place.
        """

    def audio_frame(self, hidden: np.ndarray, choose: ChooseCode) -> list[int]:
        """Run the audio head on ``hidden``; ``choose(i, logits_i)`` picks codebook i's code."""

    def decode_segment(self, codes: np.ndarray, segment: int, first_code: int = 0,
                       phase: SourcePhase | None = None, flow_steps: int | None = None) -> np.ndarray:
        """(frames, num_codebooks) codes -> 24 kHz waveform; ``codes[0]`` is code ``first_code`` of answer
        segment ``segment`` (which decides the noise: a window of a segment gets the segment's noise).
        ``phase`` carries the vocoder source's phase between the windows of a streamed segment (it takes up
        the phase where it says and records this window's); None for a whole segment, which starts at 0.
        ``flow_steps``: this decode's Euler steps (None: the backend's own); a segment's first streamed window
        may ask for fewer (``StreamSettings.first_flow_steps``)."""

    def reset(self) -> None:
        """Forget the conversation (empty KV cache, position 0): the loop re-prefills what it keeps."""

    def tokenize(self, audio16k: np.ndarray) -> np.ndarray:
        """16 kHz mono -> (frames, K) codes of the audio tokenizer, 30 s chunks each on its own (spec §1);
        the published history re-encodes answer audio with it."""


class TextCodec(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str: ...


@dataclass
class TextDelta:
    text: str
    ids: list[int]


@dataclass
class AudioSegment:
    """Audio of one answer segment, or of a piece of it when the segment is streamed: ``codes`` are the
    frames new in this piece, ``final`` marks a segment's last piece (the whole segment when not streamed)."""

    codes: np.ndarray
    waveform: np.ndarray
    final: bool = True
    end: int = 0  # the conversation's length once the piece's last frame was made: where a cut keeping it goes


@dataclass
class TurnEnd:
    """Why the turn stopped, and its timings in seconds from the end of the user's input:
    ``first_text``, ``first_audio`` (absent when none came) and ``total``."""

    reason: str
    timings: dict[str, float] = field(default_factory=dict)


Event = TextDelta | AudioSegment | TurnEnd


@dataclass
class TurnResult:
    text: str = ""
    text_ids: list[int] = field(default_factory=list)
    segments: list[AudioSegment] = field(default_factory=list)
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def waveform(self, crossfade: int) -> np.ndarray:
        return crossfade_join([s.waveform for s in self.segments], crossfade)

    def segment_codes(self) -> list[np.ndarray]:
        """The codes of each answer segment, its streamed pieces put together."""
        out: list[np.ndarray] = []
        pieces: list[np.ndarray] = []
        for s in self.segments:
            pieces.append(s.codes)
            if s.final:
                out.append(np.concatenate(pieces))
                pieces = []
        return out


def crossfade_join(chunks: Sequence[np.ndarray], overlap: int) -> np.ndarray:
    """Join segments with a linear crossfade of ``overlap`` samples (spec §12)."""
    out = np.zeros(0, dtype=np.float32)
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float32)
        n = min(overlap, out.size, chunk.size)
        if n:
            fade = np.linspace(0.0, 1.0, n + 2, dtype=np.float32)[1:-1]
            out[-n:] = out[-n:] * (1 - fade) + chunk[:n] * fade
            chunk = chunk[n:]
        out = np.concatenate([out, chunk])
    return out


class StreamJoiner:
    """``crossfade_join`` as the audio comes: push each segment or piece, play what it returns, flush at the end
    (the last ``overlap`` samples wait for the next segment)."""

    def __init__(self, overlap: int) -> None:
        self.overlap = overlap
        self.tail = np.zeros(0, dtype=np.float32)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        joined = crossfade_join([self.tail, chunk], self.overlap)
        keep = min(self.overlap, joined.size)
        self.tail = joined[joined.size - keep:]
        return joined[:joined.size - keep]

    def flush(self) -> np.ndarray:
        tail, self.tail = self.tail, np.zeros(0, dtype=np.float32)
        return tail


class ContextFull(RuntimeError):
    """The current turn alone no longer fits the context window."""


class SpeechLoop:
    """One conversation: prompts, the §8 loop, and its events.

    When the context window would overflow, the oldest whole turns are dropped (the system
    prompt stays) and the kept history is prefilled again into a fresh cache; a turn that
    cannot fit even alone ends with ``TurnEnd("context_full")``. Nothing raises.

    With ``generation.history == "published"`` an answer (spoken or text-only) is logged as it is made, and
    ``settle_history`` swaps its live positions for the published ones (``published_history.py``):
    the answer's audio re-encoded, the cache cut back to the first position that changes and the
    rest prefilled. A live front end calls it while the answer plays; otherwise the next turn does,
    before it feeds anything, and its ``TurnEnd`` timings carry the cost as ``history``.
    """

    def __init__(self, cfg: ModelConfig, backend: Backend, codec: TextCodec, seed: int = 0,
                 generation: GenerationConfig | None = None, max_context: int | None = None) -> None:
        self.cfg, self.backend, self.codec = cfg, backend, codec
        self.gen = generation or cfg.generation
        self.tok = cfg.tokens
        self.rng = np.random.default_rng(seed)
        self.max_context = max_context or cfg.llm.max_position_embeddings
        self.context: list[int] = []  # every id fed so far: the repetition-penalty history of text steps
        self._codes: list[np.ndarray] = []  # the codes of those positions, per feed (zeros at text positions)
        self.turn_starts: list[int] = []  # context index where each turn begins (after the system prompt)
        self.started = False
        self._special = set(self.tok.by_id())
        self._text_ids: list[int] = []  # this answer's visible ids, decoded as a whole: no split characters
        self._shown = ""
        self._segments = 0  # answer segments so far: their index seeds their noise
        self._log: AnswerLog | None = None  # the newest spoken answer, when the history is the published one
        self.history_seconds: float | None = None  # what the newest settle_history cost (re-encode + prefill)
        self.history_prefilled = 0  # positions it prefilled again
        self._settled_at_start: float | None = None  # settle_history run by this turn's start, for its timings
        self._worker: ThreadPoolExecutor | None = None  # decodes streamed windows beside the frames (_segment)
        # a segment's last piece still decoding, for the turn to hand out during its next text step: (pieces, stream)
        self._tail: tuple[Callable[[], Iterator[AudioSegment]], SegmentStream] | None = None

    # ----- prompts -----

    def _feed(self, ids: Sequence[int], codes: np.ndarray | None = None, logits: bool = True
              ) -> tuple[np.ndarray | None, np.ndarray]:
        if len(self.context) + len(ids) > self.max_context:
            self._make_room(len(ids))
        k = self.cfg.bridge.num_codebooks
        self.context.extend(ids)
        self._codes.append(np.zeros((len(ids), k), np.int64) if codes is None else np.asarray(codes, np.int64))
        return self.backend.feed(ids, codes, logits=logits)

    def turn_overhead(self) -> int:
        """Positions a spoken turn takes besides its audio codes: the system prompt (always kept), the turn's
        special tokens, and room for a first text round and its ``<audiogen_start>``."""
        system = 1 + len(self.codec.encode(self.gen.system_prompt))
        specials = 5  # <C_Q> <audio_start> <audio_end> <audiotext_start> <C_A>
        return system + specials + self.gen.first_text.max_new_tokens + 1

    def _context_full(self, needed: int) -> ContextFull:
        current = len(self.context) - (self.turn_starts[-1] if self.turn_starts else 0)
        return ContextFull(f"the turn needs {current + needed} positions and the context holds {self.max_context} "
                           "even with older turns dropped; speak in shorter turns")

    def _make_room(self, needed: int) -> None:
        """Drop the oldest whole turns (never the system prompt or the current turn) and re-prefill."""
        if len(self.turn_starts) < 2:
            raise self._context_full(needed)
        system_end = self.turn_starts[0]
        keep_from = next((s for s in self.turn_starts[1:]
                          if system_end + len(self.context) - s + needed <= self.max_context), None)
        if keep_from is None:
            raise self._context_full(needed)
        codes = np.concatenate(self._codes)
        ids = self.context[:system_end] + self.context[keep_from:]
        kept = np.concatenate([codes[:system_end], codes[keep_from:]])
        shift = keep_from - system_end
        self.turn_starts = [system_end] + [s - shift for s in self.turn_starts if s > keep_from]
        self.context, self._codes = list(ids), [kept]
        self.backend.reset()
        self.backend.feed(ids, kept, logits=False)

    def _guarded(self, events: Iterator[Event]) -> Iterator[Event]:
        """Turn ContextFull into a clean turn end, and time the turn from its first step."""
        start = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            for event in events:
                if isinstance(event, TextDelta) and event.text:
                    timings.setdefault("first_text", time.perf_counter() - start)
                elif isinstance(event, AudioSegment):
                    timings.setdefault("first_audio", time.perf_counter() - start)
                elif isinstance(event, TurnEnd):
                    event.timings = {**timings, "total": time.perf_counter() - start, **self._history_timing()}
                yield event
        except ContextFull:
            yield TurnEnd("context_full", {**timings, "total": time.perf_counter() - start, **self._history_timing()})

    def _history_timing(self) -> dict[str, float]:
        return {} if self._settled_at_start is None else {"history": self._settled_at_start}

    def _audio_block(self, codes: np.ndarray) -> tuple[list[int], np.ndarray]:
        """``<audio_start>{pads}<audio_end>`` with the frames' codes at the pad positions."""
        n = codes.shape[0]
        ids = [self.tok.audio_start] + [self.tok.audio_pad] * n + [self.tok.audio_end]
        full = np.zeros((n + 2, codes.shape[1]), dtype=np.int64)
        full[1:-1] = codes
        return ids, full

    def _new_turn(self) -> None:
        """Put the last answer in its published form (if not done yet) before anything of a new turn is fed."""
        self._settled_at_start = None
        if self._log is not None and not self._log.settled:
            self.settle_history()
            self._settled_at_start = self.history_seconds
        self._log = None

    def _turn_prefix(self) -> list[int]:
        """What starts a user turn (the system prompt before the first); records where the turn begins."""
        self._new_turn()
        prefix = [] if self.started else [self.tok.system, *self.codec.encode(self.gen.system_prompt)]
        self.started = True
        self.turn_starts.append(len(self.context) + len(prefix))
        return prefix + [self.tok.user]

    def _prompt(self, user_codes: np.ndarray, tail: list[int]) -> tuple[np.ndarray, np.ndarray]:
        ids, codes = self._audio_block(user_codes)
        prefix = self._turn_prefix()
        all_ids = prefix + ids + tail
        all_codes = np.concatenate([np.zeros((len(prefix), codes.shape[1]), np.int64), codes,
                                    np.zeros((len(tail), codes.shape[1]), np.int64)])
        return np.asarray(all_ids), all_codes

    # ----- steps -----

    def _text_step(self, logits: np.ndarray, params: SamplingParams, stop_at_clause: bool, log: AnswerLog | None
                   ) -> Generator[AudioSegment, None, tuple[list[int], np.ndarray, np.ndarray | None]]:
        """Sample until a stop; every token but the last is fed. -> (tokens, logits, hidden) after the feeds.
        Between tokens it yields the segment before's last piece (``_drain_tail``) as soon as it is decoded."""
        out: list[int] = []
        hidden = None
        stops = {self.tok.audiogen_start, self.tok.eos}
        for _ in range(params.max_new_tokens):
            token = sample_token(logits, params, self.context + out, self.rng)
            out.append(token)
            if token in stops or (stop_at_clause and self._ends_clause(out)):
                break
            if len(out) < params.max_new_tokens:
                logits, hidden = self._feed([token])
            if self._tail is not None and self._tail[1].ready():
                yield from self._drain_tail(log)
        return out, logits, hidden

    def _ends_clause(self, ids: list[int]) -> bool:
        """A clause mark completed by the newest token (marks may span tokens, like ". "), matched in the text
        with its special tokens, as the demo's stop strings are (a special token between "." and " " is no stop)."""
        before, text = len(self.codec.decode(ids[:-1], skip_special=False)), self.codec.decode(ids, skip_special=False)
        return any(mark in text[max(0, before - len(mark) + 1):] for mark in self.gen.clause_marks)

    def _segment(self, hidden: np.ndarray, queued: bool = False) -> Iterator[AudioSegment]:
        """Frames until code 0 is EOS or the frame limit, each frame fed back but the one that reaches the limit
        (the demo gives its position to ``<audiogen_end>``); the segment's audio comes as pieces while the frames
        are made when ``generation.stream`` says so (``SegmentStream``), decoded on the loop's decode worker
        when it says ``overlap_decode`` and the backend can stop a decode (``cancel_decode``): a turn closed
        early (a barge-in) stops the decode in flight and waits for it to end.

        ``queued``: this turn's audio already went out, so the speaker is not waiting on this segment's first
        window: it is decoded aside as well. Once audio of the turn is out (``queued`` or a piece of this
        segment), the last window is left in flight for ``_drain_tail`` to hand out during the caller's next
        text step, which runs beside it."""
        params = self.gen.audio
        sizes = self.cfg.bridge.codebook_sizes
        segment, self._segments = self._segments, self._segments + 1
        cancel = getattr(self.backend, "cancel_decode", None)
        worker = self._decode_worker() if self.gen.stream.overlap_decode and self.gen.stream.chunk_frames \
            and cancel else None
        stream = SegmentStream(
            lambda codes, first, phase, steps: self.backend.decode_segment(codes, segment, first, phase, steps),
            self.gen.stream, self.gen.crossfade_samples, self.cfg, worker, first_at_once=not queued)
        handed_off = False
        codes = np.zeros((params.max_new_tokens, len(sizes)), dtype=np.int64)  # the frames, filled row by row
        ends = [len(self.context)]  # the context's length once frame k was made (and fed, but the last)
        n = played = 0  # frames made; frames covered by the pieces so far

        def choose(i: int, logits: np.ndarray) -> int:
            scores = np.asarray(logits, dtype=np.float64).copy()
            if i > 0 or n < params.min_new_tokens:
                scores[sizes[i]] = -np.inf  # only codebook 0 may end the segment, and not before min_new_tokens
            return sample_token(scores, params, codes[:n, i].tolist(), self.rng)

        def pieces(ready: list[tuple[int, np.ndarray]], final: bool = False) -> Iterator[AudioSegment]:
            nonlocal played
            for k, (end, wave) in enumerate(ready):
                last = final and k == len(ready) - 1
                yield AudioSegment(codes[played:end].copy(), wave, final=last, end=ends[n if last else end])
                played = end

        try:
            while n < params.max_new_tokens:
                frame = self.backend.audio_frame(hidden, choose)
                if frame[0] == sizes[0]:
                    break
                codes[n] = frame
                n += 1
                if n < params.max_new_tokens:
                    _, hidden = self._feed([self.tok.audio_pad], codes[n - 1:n], logits=False)
                ends.append(len(self.context))
                yield from pieces(stream.add(codes[:n]))
            ready = stream.finish(codes[:n], defer=queued or played > 0)
            if stream.pending is None and stream.rest is None:
                yield from pieces(ready, final=True)
            else:
                yield from pieces(ready)
                self._tail, handed_off = (lambda: pieces(stream.drain(), final=True), stream), True
        finally:
            if worker is not None and not handed_off:
                self._stop_stream(stream)

    def _stop_stream(self, stream: SegmentStream) -> None:
        """Drop the stream's window in flight and stop its decode (a barge-in), waiting for it to end."""
        in_flight = stream.stop()
        self.backend.cancel_decode()
        if in_flight is not None:
            wait([in_flight])

    def _drain_tail(self, log: AnswerLog | None) -> Iterator[AudioSegment]:
        """The last piece of the segment before, left decoding by ``_segment``, logged to its step (waits for it)."""
        tail, self._tail = self._tail, None
        if tail is not None:
            yield from self._logged(tail[0](), log)

    def _logged(self, pieces: Iterator[AudioSegment], log: AnswerLog | None) -> Iterator[AudioSegment]:
        for piece in pieces:
            if log is not None:
                log.add_piece(piece.waveform, piece.end - self.turn_starts[-1])
            yield piece

    def _drop_tail(self) -> None:
        tail, self._tail = self._tail, None
        if tail is not None:
            self._stop_stream(tail[1])

    def _decode_worker(self) -> ThreadPoolExecutor:
        """The thread that decodes streamed windows beside the frames, made on first use and kept for every
        later segment and turn: a thread per segment would be started and joined a few times a second."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, "bcaudio-decode")
        return self._worker

    def close(self) -> None:
        """Stop the decode in flight, if any, and end the decode worker; a later streamed segment makes a new one."""
        worker, self._worker = self._worker, None
        if worker is not None:
            self.backend.cancel_decode()  # a worker is made only for a backend that has it
            worker.shutdown(wait=True)

    def _begin_text(self) -> None:
        self._text_ids, self._shown = [], ""

    def _delta(self, ids: list[int]) -> TextDelta:
        """The new text of this answer; held back while a multi-byte character is split across tokens."""
        visible = [i for i in ids if i not in self._special]
        self._text_ids.extend(visible)
        text = self.codec.decode(self._text_ids)
        if text.endswith("\ufffd"):
            return TextDelta("", visible)
        new, self._shown = text[len(self._shown):], text
        return TextDelta(new, visible)

    # ----- modes -----

    def respond(self, user_codes: np.ndarray) -> Iterator[Event]:
        """Speech in, text + speech out (spec §8)."""
        try:
            self.start_user_audio()
            self.add_user_audio(user_codes)
        except ContextFull:
            return iter([TurnEnd("context_full")])
        return self._guarded(self.answer())

    # Incremental form of ``respond``: a live front end prefills the user's audio while they speak,
    # so at end of speech only the last chunk and the assistant prompt remain.

    def start_user_audio(self, asr: bool = False) -> None:
        """Feed the turn prefix and ``<audio_start>``; with ``asr`` the ASR prompt instead (``transcribe``'s)."""
        if asr:
            self._new_turn()
            self.turn_starts.append(len(self.context))
            self._feed(self.codec.encode(self.gen.asr_prompt) + [self.tok.audio_start], logits=False)
        else:
            self._feed(self._turn_prefix() + [self.tok.audio_start], logits=False)

    def add_user_audio(self, codes: np.ndarray) -> None:
        """Feed (frames, K) codes of the user's speech as ``<audio_pad>`` positions."""
        if len(codes):
            self._feed([self.tok.audio_pad] * len(codes), np.asarray(codes, dtype=np.int64), logits=False)

    def answer(self) -> Iterator[Event]:
        """Close the user's audio and run the §8 rounds as the demo does: after the last allowed segment one
        more text step is shown but not spoken, and a step that ended in eos gets its segment with no
        ``<audiogen_end>`` after it."""
        logits, hidden = self._feed([self.tok.audio_end, self.tok.audiotext_start, self.tok.assistant])
        log = self._start_log()
        self._begin_text()
        params = self.gen.first_text
        try:
            for round_ in range(self.gen.max_rounds + 1):
                tokens, logits, hidden = yield from self._text_step(logits, params, round_ > 0, log)
                yield from self._drain_tail(log)  # the segment before's last piece, if still decoding: wait for it
                if log is not None:
                    log.add_text(tokens)
                ended = tokens[-1] == self.tok.eos
                delta = self._delta(tokens)
                if delta.ids:
                    yield delta
                if round_ == self.gen.max_rounds:
                    break
                if ended and len(tokens) == 1:
                    yield TurnEnd("eos")
                    return
                _, hidden = self._feed([self.tok.audiogen_start], logits=False)  # replaces the step's last token
                # after the turn's first segment its audio is out: later ones need not be decoded at once
                yield from self._logged(self._segment(hidden, queued=round_ > 0), log)
                if ended:
                    yield from self._drain_tail(log)
                    yield TurnEnd("eos")
                    return
                logits, hidden = self._feed([self.tok.audiogen_end])
                params = self.gen.text
            yield TurnEnd("max_rounds")
        finally:
            self._drop_tail()  # closed early (a barge-in): the piece in flight is never played

    # The published history (``published_history.py``).

    def _start_log(self) -> AnswerLog | None:
        if self.gen.history != "published":
            return None
        self._log = AnswerLog(len(self.context) - self.turn_starts[-1])
        return self._log

    def settle_history(self, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Put the newest answer in its published form: re-encode what was heard of its audio, cut the cache
        back to the first position that differs and prefill the rest. False when ``cancelled()`` turned true
        first (nothing changed; it stays to be done). Only while that answer is the end of the conversation.
        """
        log = self._log
        if log is None or log.settled:
            return True
        t0 = time.perf_counter()
        k = self.cfg.bridge.num_codebooks
        drop = [self.codec.decode([t], skip_special=False) for t in (self.tok.eos, self.tok.audiogen_start,
                                                                      self.tok.audiogen_end)]
        span = published_span(
            log.kept(), self.tok,
            lambda ids: self.codec.encode(published_text(ids, lambda i: self.codec.decode(i, skip_special=False),
                                                         drop)),
            lambda pieces: crossfade_join(pieces, self.gen.crossfade_samples), self._encode_answer_audio, k,
            cancelled)
        if span is None or cancelled():
            return False
        ids, codes = span
        start = self.turn_starts[-1] + log.offset
        now = np.concatenate(self._codes)[start:] if self._codes else np.zeros((0, k), np.int64)
        keep = common_prefix(self.context[start:], now, ids, codes)
        self.truncate(start + keep)
        if keep < len(ids):
            self._feed(ids[keep:], codes[keep:], logits=False)
        log.settled = True
        self.history_prefilled = len(ids) - keep
        self.history_seconds = time.perf_counter() - t0
        return True

    def _encode_answer_audio(self, waveform: np.ndarray) -> np.ndarray:
        """The audio tokenizer's codes of a 24 kHz answer waveform read back at 16 kHz (as the demo reads its wav)."""
        rate = self.cfg.frontend.sampling_rate
        if waveform.size == 0:
            return np.zeros((0, self.cfg.bridge.num_codebooks), np.int64)
        return self.backend.tokenize(to_mono_rate(waveform, self.cfg.vocoder.sampling_rate, rate, "answer audio"))

    def guarded_answer(self) -> Iterator[Event]:
        """``answer`` with the turn timings and a context overflow ending as ``TurnEnd``, as ``respond`` gives."""
        return self._guarded(self.answer())

    def guarded_answer_text(self) -> Iterator[Event]:
        """The incremental form of ``respond_text``: close the user's audio, answer in text only."""

        def run() -> Iterator[Event]:
            logits, _ = self._feed([self.tok.audio_end, self.tok.assistant])
            yield from self._plain_text(logits, self.gen.text_only, self._start_log())

        return self._guarded(run())

    def guarded_transcript(self) -> Iterator[Event]:
        """The incremental form of ``transcribe`` (the audio was started with ``start_user_audio(asr=True)``)."""

        def run() -> Iterator[Event]:
            logits, _ = self._feed([self.tok.audio_end])
            yield from self._plain_text(logits, self.gen.asr)

        return self._guarded(run())

    # Barge-in: the history keeps what the user actually heard, so the next turn sees the same conversation.

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on, in the context and in the backend's cache.

        A backend without its own ``truncate`` is reset and the kept context prefilled again.
        """
        if not 0 <= length <= len(self.context):
            raise ValueError(f"cannot truncate a context of {len(self.context)} positions to {length}")
        if self._log is not None and self.turn_starts and length < self.turn_starts[-1] + self._log.offset:
            self._log = None  # the cut goes back before the answer: nothing of it is left to publish
        if length == len(self.context):
            return
        codes = np.concatenate(self._codes)[:length]
        self.context, self._codes = self.context[:length], [codes]
        self.turn_starts = [s for s in self.turn_starts if s < length]
        self.started = self.started and length > 0
        cut = getattr(self.backend, "truncate", None)
        if cut is not None:
            cut(length)
        else:
            self.backend.reset()
            if length:
                self.backend.feed(self.context, codes, logits=False)

    def interrupt_at(self, boundary: int, heard: int | None = None) -> None:
        """Keep the answer up to ``boundary`` (just after a played segment's last frame) and close it with
        ``<audiogen_end>``: the same state as an answer that ended after that segment. The published history
        then keeps, re-encoded (``settle_history``), the first ``heard`` audio pieces given out, or when not
        given those that end before ``boundary``."""
        if self._log is not None:
            if heard is None:
                self._log.hear_until(boundary - self.turn_starts[-1])
            else:
                self._log.heard, self._log.settled = heard, False
        self.truncate(boundary)
        self._feed([self.tok.audiogen_end], logits=False)

    def respond_text(self, user_codes: np.ndarray) -> Iterator[Event]:
        """Speech in, text only: the prompt ends with ``<C_A>``. The published history holds the answer as the
        demo's text mode does, by its string tokenized again; ASR and TTS turns stay as fed (the demo has them
        only as one-shot scripts, never in a conversation)."""

        def run() -> Iterator[Event]:
            ids, codes = self._prompt(user_codes, [self.tok.assistant])
            logits, _ = self._feed(ids.tolist(), codes)
            yield from self._plain_text(logits, self.gen.text_only, self._start_log())

        return self._guarded(run())

    def transcribe(self, user_codes: np.ndarray) -> Iterator[Event]:
        """ASR prompt of spec §8, greedy with repetition penalty."""

        def run() -> Iterator[Event]:
            self._new_turn()
            block, codes = self._audio_block(user_codes)
            prefix = self.codec.encode(self.gen.asr_prompt)
            all_codes = np.concatenate([np.zeros((len(prefix), codes.shape[1]), np.int64), codes])
            self.turn_starts.append(len(self.context))
            logits, _ = self._feed(prefix + block, all_codes)
            yield from self._plain_text(logits, self.gen.asr)

        return self._guarded(run())

    def _plain_text(self, logits: np.ndarray, params: SamplingParams, log: AnswerLog | None = None
                    ) -> Iterator[Event]:
        """A text answer up to eos (not fed) or the token limit; ``log`` records it as one text step, token by
        token as it is fed (so a turn abandoned part way is logged as far as it went)."""
        self._begin_text()
        out: list[int] = []
        if log is not None:
            log.add_text([])
        for _ in range(params.max_new_tokens):
            token = sample_token(logits, params, self.context + out, self.rng)
            if token == self.tok.eos:
                yield TurnEnd("eos")
                return
            out.append(token)
            delta = self._delta([token])
            if delta.ids:  # a token whose text is held back (a split character) still counts
                yield delta
            logits, _ = self._feed([token])
            if log is not None:
                log.extend_text([token])
        yield TurnEnd("max_tokens")

    def speak(self, text: str) -> Iterator[Event]:
        """TTS: each clause piece (> tts_min_piece_chars) followed by ``<audiogen_start>`` and its audio."""

        def run() -> Iterator[Event]:
            prefix = self._turn_prefix() + self.codec.encode(text)
            self._feed(prefix + [self.tok.audiotext_start, self.tok.assistant], logits=False)
            for piece in split_clauses(text, self.gen.clause_marks, self.gen.tts_min_piece_chars):
                ids = self.codec.encode(piece)
                yield TextDelta(piece, ids)
                _, hidden = self._feed(ids + [self.tok.audiogen_start], logits=False)
                yield from self._segment(hidden)
                self._feed([self.tok.audiogen_end], logits=False)
            yield TurnEnd("done")

        return self._guarded(run())


def split_clauses(text: str, marks: Sequence[str], min_chars: int) -> list[str]:
    """Cut after clause punctuation once a piece is longer than ``min_chars``; a short tail joins the last piece."""
    pieces, current = [], ""
    for ch in text:
        current += ch
        if len(current.strip()) > min_chars and any(current.endswith(m) for m in marks):
            pieces.append(current.strip())
            current = ""
    tail = current.strip()
    if tail and pieces and len(tail) <= min_chars:
        pieces[-1] = f"{pieces[-1]} {tail}"
    elif tail:
        pieces.append(tail)
    return pieces


def collect(events: Iterator[Event], crossfade: int) -> TurnResult:
    """Drain an event stream into one result."""
    result = TurnResult()
    for event in events:
        if isinstance(event, TextDelta):
            result.text += event.text
            result.text_ids.extend(event.ids)
        elif isinstance(event, AudioSegment):
            result.segments.append(event)
        else:
            result.reason, result.timings = event.reason, event.timings
    return result
