"""A second, deliberately plain implementation of the spec §8 generation loop, for tests only.

Written from the spec and issue 14's account of the published demo, not from ``SpeechLoop``: it
shares no helper with it. It calls the torch reference's modules directly (the LLM with its own
cache; every depth position of the audio head recomputed from scratch with ``teacher_forced``, no
depth cache; the detokenizer, flow solve, vocoder and audio tokenizer on whole segments), samples with
its own numpy code over the full vocabulary (the processor order of transformers' generate:
repetition penalty, temperature, top-k, top-p), and draws from a numpy Generator the way
``Generator.choice(n, p=probs)`` does (one uniform draw per sampled token), so a seeded run is
comparable draw for draw. The flow and vocoder noise is the model's input drawn by ``NoiseSource``
(per conversation segment index), the one piece taken from the runtime: it is what both backends feed
the decoder, not part of the loop.

The demo's edges: the system prompt before the first user turn; after the last allowed round one
more text step is shown and not spoken; the frame that reaches the cap is not fed (its position goes
to ``<audiogen_end>``); a step that ended in eos gets its segment and no ``<audiogen_end>``; clause
stops are found in the text decoded with its special tokens.

History (``history``): ``"published"`` is how the demo holds a spoken answer in the next turn's
prompt: it keeps no cache, writes down every text step's string (its last token kept, the eos and
audiogen strings taken out) and every segment's decoded audio, and rebuilds the prompt: each string
tokenized again, each segment as ``<audiogen_start>`` + the audio tokenizer's codes of its waveform
read back at 16 kHz + ``<audiogen_end>``; here the whole rebuilt conversation is prefilled from
position 0 at the next turn's start. A text-only answer is held as the demo's text mode holds it, its
string tokenized again; ASR and TTS turns stay as fed (the demo runs those only as one-shot scripts).
``"live"`` keeps the conversation as fed (the live answer's ``<audiogen_start>`` in place of each text
step's last token, the generated codes as the answer's frames).

What it records is what a model would see: every id and frame the model holds, in order, and the
visible text ids and codes of each turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import soxr
import torch

from bcaudio.export.audio_tokenizer import AudioTokenizer
from bcaudio.export.flow_reference import flow_mel
from bcaudio.runtime.generation.noise import NoiseSource

HISTORY_MODES = ("published", "live")


@dataclass
class PlainTurn:
    text_ids: list[int] = field(default_factory=list)
    segments: list[list[list[int]]] = field(default_factory=list)  # per segment, per frame, 8 codes
    reason: str = ""
    stops: list[str] = field(default_factory=list, compare=False)  # why each text step stopped


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

    def __init__(self, ref, tok, generation, seed: int, history: str = "published") -> None:
        if history not in HISTORY_MODES:
            raise ValueError(f"history {history!r}: the plain loop models {HISTORY_MODES}")
        self.ref, self.tok, self.gen, self.history = ref, tok, generation, history
        self.t = ref.cfg.tokens
        self.sizes = list(ref.cfg.bridge.codebook_sizes)
        self.rng = np.random.default_rng(seed)
        self.noise = NoiseSource(ref.cfg, seed)
        self.ids: list[int] = []  # every id the model holds
        self.codes: list[list[int]] = []  # the 8 codes of each of those positions (zeros at text positions)
        self.said_system = False
        self.cache = ref.llm.empty_cache(1)
        self.segments_made = 0  # answer segments of the conversation: each one's index picks its noise
        self.answer: tuple[int, list[int], list[list[int]]] | None = None  # (start, ids, codes): last answer, published
        self.rebuilt: list[int] = []  # per rebuild, the answer's positions whose published form differs from the live

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

    @torch.no_grad()
    def waveform(self, segment: list[list[int]], index: int) -> np.ndarray:
        """The whole segment decoded at 24 kHz: detokenizer, flow solve, vocoder (phase from 0)."""
        if not segment:
            return np.zeros(0, np.float32)
        ref = self.ref
        states = ref.detokenizer(torch.tensor([segment]), ref.bridge)
        z, source = self.noise.window(index, 0, len(segment))
        mel = flow_mel(ref.prenet, ref.estimator, states, torch.from_numpy(z), ref.cfg.flow.diffusion_steps,
                       ref.cfg.flow.cfg_rate)
        harmonics = ref.cfg.vocoder.nb_harmonics + 1
        wave, _ = ref.vocoder(mel, torch.from_numpy(source), torch.from_numpy(self.noise.phases(index)),
                              torch.zeros(1, harmonics), torch.zeros(1, dtype=torch.long))
        return wave[0].numpy()

    @torch.no_grad()
    def heard_codes(self, wave24k: np.ndarray) -> list[list[int]]:
        """The audio tokenizer's codes of a 24 kHz answer read back at 16 kHz, 30 s chunks on their own (spec §1)."""
        if wave24k.size == 0:
            return []
        front = self.ref.cfg.frontend
        wave = soxr.resample(wave24k.astype(np.float32), self.ref.cfg.vocoder.sampling_rate, front.sampling_rate,
                             quality="HQ").astype(np.float32)
        tokenizer = AudioTokenizer(self.ref.cfg, self.ref.encoder, self.ref.bridge).eval()
        out: list[list[int]] = []
        size = 30 * front.sampling_rate
        for s in range(0, wave.size, size):
            chunk = wave[s:s + size]
            if s and chunk.size < front.n_fft:
                break  # a tail shorter than one FFT window gives no token
            out += tokenizer(torch.from_numpy(chunk)[None])[0].tolist()
        return out

    # the turn, straight from spec §8

    def _text(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def _visible(self, ids: list[int]) -> list[int]:
        special = set(self.t.by_id())
        return [i for i in ids if i not in special]

    def _published_text(self, step: list[int]) -> list[int]:
        text = self._text(step)
        for special in (self.t.eos, self.t.audiogen_start, self.t.audiogen_end):
            text = text.replace(self.tok.id_to_token(special), "")
        return self.tok.encode(text, add_special_tokens=False).ids

    def _audio_segment(self, hidden: torch.Tensor, turn: PlainTurn) -> list[list[int]]:
        params = self.gen.audio
        segment: list[list[int]] = []
        while len(segment) < params.max_new_tokens:
            codes = self.frame(hidden, segment, params)
            if codes[0] == self.sizes[0]:
                break
            segment.append(codes)
            if len(segment) < params.max_new_tokens:  # the demo gives the cap frame's position to <audiogen_end>
                _, hidden = self.feed([self.t.audio_pad], [codes])
        turn.segments.append(segment)
        return segment

    def _begin(self, prompt: list[int], frames: list[list[int]]) -> tuple[np.ndarray, torch.Tensor]:
        """Feed a new turn's prompt; under the published history the last spoken answer is first swapped for
        its published form and the whole conversation prefilled again, as the demo rebuilds its prompt."""
        if self.history == "published" and self.answer is not None:
            start, ids, codes = self.answer
            prompt, frames = self.ids[:start] + ids + prompt, self.codes[:start] + codes + frames
            live = list(zip(self.ids[start:], map(tuple, self.codes[start:]), strict=True))
            new = list(zip(ids, map(tuple, codes), strict=True))
            same = 0
            while same < min(len(live), len(new)) and live[same] == new[same]:
                same += 1
            self.rebuilt.append(len(ids) - same)
            self.ids, self.codes, self.cache = [], [], self.ref.llm.empty_cache(1)
        self.answer = None
        return self.feed(prompt, frames)

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

    def _text_step(self, logits: np.ndarray, params, clause_stop: bool, turn: PlainTurn
                   ) -> tuple[list[int], np.ndarray]:
        """Up to max_new_tokens, stop at <audiogen_start> or eos (later rounds also at a clause mark); every
        token but the last is fed."""
        step: list[int] = []
        while True:
            token = plain_sample(logits, params.temperature, params.top_k, params.top_p,
                                 params.repetition_penalty, self.ids + step, self.rng)
            step.append(token)
            if token == self.t.audiogen_start:
                turn.stops.append("audiogen_start")
                return step, logits
            if token == self.t.eos:
                turn.stops.append("eos")
                return step, logits
            if clause_stop:
                before, now = self._text(step[:-1]), self._text(step)
                if any(now.count(m) > before.count(m) for m in self.gen.clause_marks):
                    turn.stops.append("clause")
                    return step, logits
            if len(step) == params.max_new_tokens:
                turn.stops.append("max_tokens")
                return step, logits
            logits, _ = self.feed([token])

    def respond(self, user_codes: np.ndarray) -> PlainTurn:
        k = len(self.sizes)
        turn = PlainTurn()
        start = self._user_start()
        audio_ids, audio_frames = self._user_audio(user_codes)
        tail = [self.t.audiotext_start, self.t.assistant]
        logits, _ = self._begin(start + audio_ids + tail, [[0] * k] * len(start) + audio_frames + [[0] * k] * 2)
        answer_start = len(self.ids)
        published: list[int] = []
        published_codes: list[list[int]] = []
        params = self.gen.first_text
        for round_ in range(self.gen.max_rounds + 1):
            step, logits = self._text_step(logits, params, round_ > 0, turn)
            turn.text_ids += self._visible(step)
            text = self._published_text(step)
            published += text
            published_codes += [[0] * k] * len(text)
            if round_ == self.gen.max_rounds:  # the demo shows one more text step and speaks none
                turn.reason = "max_rounds"
                break
            if step == [self.t.eos]:
                turn.reason = "eos"
                break
            # the step's last token is replaced by <audiogen_start>; then the audio step
            _, hidden = self.feed([self.t.audiogen_start])
            segment = self._audio_segment(hidden, turn)
            if self.history == "published":
                heard = self.heard_codes(self.waveform(segment, self.segments_made))
                published += [self.t.audiogen_start] + [self.t.audio_pad] * len(heard) + [self.t.audiogen_end]
                published_codes += [[0] * k] + heard + [[0] * k]
            self.segments_made += 1
            if step[-1] == self.t.eos:  # the demo closes no segment after eos
                turn.reason = "eos"
                break
            logits, _ = self.feed([self.t.audiogen_end])
            params = self.gen.text
        self.answer = (answer_start, published, published_codes)
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
        logits, _ = self._begin(start + audio_ids + [self.t.assistant],
                                [[0] * k] * len(start) + audio_frames + [[0] * k])
        answer_start = len(self.ids)
        turn = self._text_answer(logits, self.gen.text_only)
        text = self._published_text(self.ids[answer_start:])
        self.answer = (answer_start, text, [[0] * k] * len(text))
        return turn

    def transcribe(self, user_codes: np.ndarray) -> PlainTurn:
        k = len(self.sizes)
        prompt = self.tok.encode(self.gen.asr_prompt, add_special_tokens=False).ids
        audio_ids, audio_frames = self._user_audio(user_codes)
        logits, _ = self._begin(prompt + audio_ids, [[0] * k] * len(prompt) + audio_frames)
        return self._text_answer(logits, self.gen.asr)

    def speak(self, text: str) -> PlainTurn:
        turn = PlainTurn()
        enc = self.tok.encode
        prompt = self._user_start() + enc(text, add_special_tokens=False).ids + [self.t.audiotext_start,
                                                                                  self.t.assistant]
        self._begin(prompt, [[0] * len(self.sizes)] * len(prompt))
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
            self.segments_made += 1
            self.feed([self.t.audiogen_end])
        turn.reason = "done"
        return turn
