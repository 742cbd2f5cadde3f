"""A second, deliberately plain implementation of the spec §8 generation loop, for tests only.

Written from the spec (and issue 14's account of the published demo), not from ``SpeechLoop``: it
shares no helper with it. It calls the torch reference's modules directly (the LLM with its own
cache, numbered from the conversation's start; every depth position of the audio head recomputed from
scratch with ``teacher_forced``, no depth cache), samples with its own numpy code over the full vocabulary
(the processor order of transformers' generate: repetition penalty, temperature, top-k, top-p),
and draws from a numpy Generator the way ``Generator.choice(n, p=probs)`` does (one uniform draw per
sampled token), so a seeded run is comparable draw for draw.

What it records is what a model would see: every id and frame fed, in order, and the visible text
ids and codes of each turn.

History mode: ``"kv"`` keeps the conversation as fed (the live answer's ``<audiogen_start>`` in place
of each text step's last token, the generated codes as the answer's frames). The published demo's
history (issue 14 item 5: the replaced token kept, answer audio re-encoded) is not modelled here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

HISTORY_MODES = ("kv",)


@dataclass
class PlainTurn:
    text_ids: list[int] = field(default_factory=list)
    segments: list[list[list[int]]] = field(default_factory=list)  # per segment, per frame, 8 codes
    reason: str = ""


def plain_sample(logits: np.ndarray, temperature: float, top_k: int, top_p: float, penalty: float,
                 seen: list[int], rng: np.random.Generator) -> int:
    """Transformers' order over the whole vocabulary; greedy when temperature is 0 (no draw)."""
    scores = [float(x) for x in logits]
    for token in set(seen):
        if 0 <= token < len(scores):
            s = scores[token]
            scores[token] = s * penalty if s < 0 else s / penalty
    if temperature == 0:
        best = 0
        for i, s in enumerate(scores):
            if s > scores[best]:
                best = i
        return best
    scores = [s / temperature for s in scores]
    if 0 < top_k < len(scores):
        kth = sorted(scores, reverse=True)[top_k - 1]
        scores = [s if s >= kth else -np.inf for s in scores]
    top = max(scores)
    weights = np.array([np.exp(s - top) if s != -np.inf else 0.0 for s in scores])
    probs = weights / weights.sum()
    if top_p < 1.0:
        order = sorted(range(len(probs)), key=lambda i: -probs[i])
        mass, keep = 0.0, []
        for i in order:
            if mass >= top_p or probs[i] == 0:
                break
            keep.append(i)
            mass += probs[i]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    return int(np.searchsorted(cdf, rng.random(), side="right"))


class PlainLoop:
    """One conversation on the torch reference ``ref`` with the tokenizer ``tok`` (a ``tokenizers.Tokenizer``)."""

    def __init__(self, ref, tok, generation, seed: int, history: str = "kv") -> None:
        if history not in HISTORY_MODES:
            raise ValueError(f"history {history!r}: the plain loop models {HISTORY_MODES}")
        self.ref, self.tok, self.gen = ref, tok, generation
        self.t = ref.cfg.tokens
        self.sizes = list(ref.cfg.bridge.codebook_sizes)
        self.rng = np.random.default_rng(seed)
        self.ids: list[int] = []  # every id fed so far
        self.codes: list[list[int]] = []  # the 8 codes of every position fed (zeros at text positions)
        self.said_system = False
        self.cache = ref.llm.empty_cache(1)

    # the model, run the long way

    @torch.no_grad()
    def feed(self, ids: list[int], frames: list[list[int]] | None = None) -> tuple[np.ndarray, torch.Tensor]:
        k = len(self.sizes)
        start = len(self.ids)
        for j, i in enumerate(ids):
            self.ids.append(i)
            self.codes.append(list(frames[j]) if frames is not None else [0] * k)
        logits, hidden, self.cache = self.ref.llm(torch.tensor([self.ids[start:]]), torch.tensor([self.codes[start:]]),
                                                  torch.arange(start, len(self.ids))[None], self.cache)
        return logits[0].numpy(), hidden[0, -1]

    @torch.no_grad()
    def frame(self, hidden: torch.Tensor, segment: list[list[int]], params) -> list[int]:
        tables = self.ref.llm.model.audio_embed_layers
        depth = [hidden]
        codes: list[int] = []
        for i in range(len(self.sizes)):
            logits = self.ref.audio_head.teacher_forced(torch.stack(depth)[None])[i][0].numpy().astype(np.float64)
            if i > 0:
                logits[self.sizes[i]] = -np.inf  # only codebook 0 may end the segment
            code = plain_sample(logits, params.temperature, params.top_k, params.top_p, params.repetition_penalty,
                                [f[i] for f in segment], self.rng)
            codes.append(code)
            depth.append(sum(tables[j](torch.tensor(codes[j])) for j in range(i + 1)))  # c_(i+1)
        return codes

    # the turn, straight from spec §8

    def _text(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def _visible(self, ids: list[int]) -> list[int]:
        special = set(self.t.by_id())
        return [i for i in ids if i not in special]

    def _audio_segment(self, hidden: torch.Tensor, turn: PlainTurn) -> None:
        params = self.gen.audio
        segment: list[list[int]] = []
        while len(segment) < params.max_new_tokens:
            codes = self.frame(hidden, segment, params)
            if codes[0] == self.sizes[0]:
                break
            segment.append(codes)
            _, hidden = self.feed([self.t.audio_pad], [codes])
        turn.segments.append(segment)

    def _user_start(self) -> list[int]:
        start = []
        if not self.said_system:
            start = [self.t.system] + self.tok.encode(self.gen.system_prompt, add_special_tokens=False).ids
            self.said_system = True
        return start + [self.t.user]

    def _user_audio(self, user_codes: np.ndarray) -> tuple[list[int], list[list[int]]]:
        k = len(self.sizes)
        ids = [self.t.audio_start] + [self.t.audio_pad] * len(user_codes) + [self.t.audio_end]
        frames = [[0] * k] + [list(map(int, c)) for c in user_codes] + [[0] * k]
        return ids, frames

    def respond(self, user_codes: np.ndarray) -> PlainTurn:
        k = len(self.sizes)
        turn = PlainTurn()
        start = self._user_start()
        audio_ids, audio_frames = self._user_audio(user_codes)
        tail = [self.t.audiotext_start, self.t.assistant]
        logits, hidden = self.feed(start + audio_ids + tail, [[0] * k] * len(start) + audio_frames + [[0] * k] * 2)
        params = self.gen.first_text
        for round_ in range(self.gen.max_rounds):
            # 1. a text step: up to max_new_tokens, stop at <audiogen_start> or eos (later rounds: a clause mark)
            step: list[int] = []
            while True:
                token = plain_sample(logits, params.temperature, params.top_k, params.top_p,
                                     params.repetition_penalty, self.ids + step, self.rng)
                step.append(token)
                if token in (self.t.audiogen_start, self.t.eos) or len(step) == params.max_new_tokens:
                    break
                if round_ > 0:
                    before, now = self._text(step[:-1]), self._text(step)
                    if any(now.count(m) > before.count(m) for m in self.gen.clause_marks):
                        break
                logits, hidden = self.feed([token])
            turn.text_ids += self._visible(step)
            if step == [self.t.eos]:
                turn.reason = "eos"
                return turn
            # 2. the step's last token is replaced by <audiogen_start>; 3. the audio step
            _, hidden = self.feed([self.t.audiogen_start])
            self._audio_segment(hidden, turn)
            # 4. <audiogen_end> closes the segment
            logits, hidden = self.feed([self.t.audiogen_end])
            if step[-1] == self.t.eos:
                turn.reason = "eos"
                return turn
            params = self.gen.text
        turn.reason = "max_rounds"
        return turn

    def _text_answer(self, logits: np.ndarray, params) -> PlainTurn:
        turn = PlainTurn()
        for _ in range(params.max_new_tokens):
            token = plain_sample(logits, params.temperature, params.top_k, params.top_p,
                                 params.repetition_penalty, self.ids, self.rng)
            if token == self.t.eos:
                turn.reason = "eos"
                return turn
            turn.text_ids += self._visible([token])
            logits, _ = self.feed([token])
        turn.reason = "max_tokens"
        return turn

    def respond_text(self, user_codes: np.ndarray) -> PlainTurn:
        k = len(self.sizes)
        start = self._user_start()
        audio_ids, audio_frames = self._user_audio(user_codes)
        logits, _ = self.feed(start + audio_ids + [self.t.assistant],
                              [[0] * k] * len(start) + audio_frames + [[0] * k])
        return self._text_answer(logits, self.gen.text_only)

    def transcribe(self, user_codes: np.ndarray) -> PlainTurn:
        k = len(self.sizes)
        prompt = self.tok.encode(self.gen.asr_prompt, add_special_tokens=False).ids
        audio_ids, audio_frames = self._user_audio(user_codes)
        logits, _ = self.feed(prompt + audio_ids, [[0] * k] * len(prompt) + audio_frames)
        return self._text_answer(logits, self.gen.asr)

    def speak(self, text: str) -> PlainTurn:
        turn = PlainTurn()
        enc = self.tok.encode
        self.feed(self._user_start() + enc(text, add_special_tokens=False).ids
                  + [self.t.audiotext_start, self.t.assistant])
        # pieces: cut after a clause mark once longer than tts_min_piece_chars; a short tail joins the last piece
        pieces, piece = [], ""
        for ch in text:
            piece += ch
            if len(piece.strip()) > self.gen.tts_min_piece_chars and any(piece.endswith(m)
                                                                          for m in self.gen.clause_marks):
                pieces.append(piece.strip())
                piece = ""
        if piece.strip():
            if pieces and len(piece.strip()) <= self.gen.tts_min_piece_chars:
                pieces[-1] += " " + piece.strip()
            else:
                pieces.append(piece.strip())
        for p in pieces:
            ids = enc(p, add_special_tokens=False).ids
            turn.text_ids += ids
            _, hidden = self.feed(ids + [self.t.audiogen_start])
            self._audio_segment(hidden, turn)
            self.feed([self.t.audiogen_end])
        turn.reason = "done"
        return turn
