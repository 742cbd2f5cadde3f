"""An answer as the published demo holds it in the next turn's prompt (``generation.history = "published"``).

The published demo does not carry its KV cache from one turn to the next. It writes each answer down
(the text of every text step, and every segment as a 24 kHz wav file) and rebuilds the whole prompt
from that record: a text step's string keeps its last token (the clause punctuation, or the 50th
token, which the live turn replaced by ``<audiogen_start>``; only eos, ``<audiogen_start>`` and
``<audiogen_end>`` are taken out of the string) and is tokenized again, and a segment becomes
``<audiogen_start>`` + one ``<audio_pad>`` per code + ``<audiogen_end>``, the codes being the audio
tokenizer's codes of the segment's decoded waveform read back at 16 kHz. The live cache holds the
generated codes and the replaced tokens instead, a form the model was not shown in earlier turns. A text-only
answer (the demo's text mode) is one text step with no segment: its string, tokenized again.

``AnswerLog`` is that record, kept while the answer is generated; ``published_span`` writes the
answer's positions from it; the loop swaps them in for the live ones (``SpeechLoop.settle_history``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bcaudio.config import SpecialTokens

Encode = Callable[[np.ndarray], np.ndarray]  # a segment's 24 kHz waveform -> (frames, K) codes
Join = Callable[[list[np.ndarray]], np.ndarray]  # a segment's streamed pieces -> its waveform


@dataclass
class AnswerStep:
    """One text step (all its tokens, the last included) and the segment spoken after it, as pieces of
    audio in the order they were given out (one piece per ``AudioSegment`` event); ``None``: no segment."""

    ids: list[int]
    pieces: list[np.ndarray] | None = None
    piece_ends: list[int] = field(default_factory=list)  # turn offset just after each piece's last frame


@dataclass
class AnswerLog:
    """The record of one answer; ``offset`` is where its positions begin, relative to its turn's start.

    ``heard`` (pieces, from the first) limits what the history keeps after a barge-in; ``settled`` says the
    loop's context already holds the published form of what is kept.
    """

    offset: int
    steps: list[AnswerStep] = field(default_factory=list)
    heard: int | None = None
    settled: bool = False

    def add_text(self, ids: Sequence[int]) -> None:
        self.steps.append(AnswerStep(list(ids)))
        self.settled = False

    def extend_text(self, ids: Sequence[int]) -> None:
        """More of the newest text step: a text-only answer is logged token by token, as it is fed."""
        self.steps[-1].ids.extend(ids)
        self.settled = False

    def add_piece(self, waveform: np.ndarray, end_offset: int) -> None:
        step = self.steps[-1]
        if step.pieces is None:
            step.pieces = []
        step.pieces.append(np.asarray(waveform, dtype=np.float32))
        step.piece_ends.append(end_offset)
        self.settled = False

    def hear_until(self, end_offset: int) -> None:
        """Keep the pieces whose frames all lie before ``end_offset`` (the live barge-in boundary)."""
        self.heard = sum(end <= end_offset for step in self.steps for end in step.piece_ends)
        self.settled = False

    def kept(self) -> list[AnswerStep]:
        """The steps the user heard: all of them, or up to the ``heard``-th piece (the rest was never played)."""
        if self.heard is None:
            return self.steps
        out: list[AnswerStep] = []
        left = self.heard
        for step in self.steps:
            if left == 0:
                break
            if step.pieces is None:
                out.append(step)
                continue
            take = min(left, len(step.pieces))
            out.append(AnswerStep(step.ids, step.pieces[:take], step.piece_ends[:take]))
            left -= take
        return out


def published_text(ids: Sequence[int], decode: Callable[[Sequence[int]], str], drop: Sequence[str]) -> str:
    """A text step's string as the demo keeps it: decoded with special tokens, then the ``drop`` strings
    (eos, ``<audiogen_start>``, ``<audiogen_end>``) taken out wherever they appear."""
    text = decode(ids)
    for s in drop:
        text = text.replace(s, "")
    return text


def published_span(steps: Sequence[AnswerStep], tokens: SpecialTokens, text_ids: Callable[[Sequence[int]], list[int]],
                   join: Join, encode: Encode, num_codebooks: int,
                   cancelled: Callable[[], bool] = lambda: False) -> tuple[list[int], np.ndarray] | None:
    """The answer's positions in the published form: (ids, codes at the ``<audio_pad>`` positions);
    ``None`` when ``cancelled()`` turned true between two segments' encodings.

    ``text_ids`` maps a step's generated ids to the ids of its published string, tokenized again on its own
    (the demo's processor cuts its prompt at every audio block and tokenizes each text piece by itself).
    """
    ids: list[int] = []
    codes: list[np.ndarray] = []
    for step in steps:
        text = text_ids(step.ids)
        ids.extend(text)
        codes.append(np.zeros((len(text), num_codebooks), np.int64))
        if step.pieces is None:
            continue
        if cancelled():
            return None
        frames = np.asarray(encode(join(step.pieces)), dtype=np.int64).reshape(-1, num_codebooks)
        ids.extend([tokens.audiogen_start] + [tokens.audio_pad] * len(frames) + [tokens.audiogen_end])
        block = np.zeros((len(frames) + 2, num_codebooks), np.int64)
        block[1:-1] = frames
        codes.append(block)
    return ids, (np.concatenate(codes) if codes else np.zeros((0, num_codebooks), np.int64))


def common_prefix(ids_a: Sequence[int], codes_a: np.ndarray, ids_b: Sequence[int], codes_b: np.ndarray) -> int:
    """How many leading positions two spans share (same id, and same codes at audio positions): the cache
    keeps those and only the rest is prefilled again."""
    n = min(len(ids_a), len(ids_b))
    same = np.asarray(ids_a[:n]) == np.asarray(ids_b[:n])
    same &= (np.asarray(codes_a[:n]) == np.asarray(codes_b[:n])).all(axis=1)
    diff = np.flatnonzero(~same)
    return int(diff[0]) if diff.size else n
