"""The §8 loop's token scheme and stop rules, driven by a scripted backend (no model needed)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pytest

from bcaudio.config import ModelConfig
from bcaudio.runtime.generation.speech_loop import AudioSegment, SpeechLoop, TextDelta, TurnEnd, collect, split_clauses


class ByteCodec:
    """ids < 256 are bytes; anything else is a special token: nothing, or ``<id>`` when specials are kept
    (and ``<id>`` in a text encodes to that id, as a tokenizer's added tokens do)."""

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for part in re.split(r"(<\d+>)", text):
            out.extend([int(part[1:-1])] if re.fullmatch(r"<\d+>", part) else list(part.encode()))
        return out

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        text, run = "", []
        for i in list(ids) + [None]:
            if i is not None and i < 256:
                run.append(i)
                continue
            text += bytes(run).decode(errors="replace")
            run = []
            if i is not None and not skip_special:
                text += f"<{i}>"
        return text


class Scripted:
    """Each feed's logits put all mass on the next scripted token; frames come from a script too."""

    def __init__(self, cfg: ModelConfig, tokens: list[int], frames: list[list[int]]) -> None:
        self.cfg, self.tokens, self.frames = cfg, list(tokens), list(frames)
        self.fed: list[int] = []
        self.fed_codes: list[list[int]] = []
        self.decoded: list[int] = []
        self.tokenized: list[int] = []
        self.replaying = False

    def feed(self, ids: Sequence[int], codes: np.ndarray | None = None, logits: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray]:
        """None for logits the loop said it would not read, as the ORT backend gives: a wrong read fails here too."""
        self.fed.extend(int(i) for i in ids)
        if codes is not None:
            self.fed_codes.extend(codes.tolist())
        scores = np.zeros(self.cfg.llm.vocab_size)
        if self.replaying:
            self.replaying = False
        elif self.tokens:
            scores[self.tokens.pop(0)] = 100.0
        return (scores if logits else None), np.zeros(self.cfg.llm.hidden_size)

    def audio_frame(self, hidden: np.ndarray, choose) -> list[int]:
        frame = self.frames.pop(0)
        out = []
        for i, code in enumerate(frame):
            logits = np.zeros(self.cfg.bridge.codebook_sizes[i] + 1)
            logits[code] = 100.0
            out.append(choose(i, logits))
        return out

    def decode_segment(self, codes: np.ndarray, segment: int, first_code: int = 0, phase=None,
                       flow_steps=None) -> np.ndarray:
        self.decoded.append(len(codes))
        frames = self.cfg.decoded_frames(len(codes))
        if phase is not None:  # as a vocoder does: the source phase after each frame, for the next window
            phase.record(first_code * self.cfg.bridge.avg_pooler, np.zeros((phase.boundaries.shape[0], frames)))
        return np.ones(frames * self.cfg.vocoder.samples_per_frame, dtype=np.float32)

    def reset(self) -> None:
        self.fed.append(-1)  # marks a re-prefill
        self.replaying = True  # the re-prefill's logits are never sampled: consume no script entry

    def tokenize(self, audio16k: np.ndarray) -> np.ndarray:
        """A stand-in audio tokenizer: one frame per 1280 samples, codes from the samples' mean."""
        self.tokenized.append(audio16k.size)
        frames = audio16k[:audio16k.size // 1280 * 1280].reshape(-1, 1280).mean(axis=1)
        sizes = np.asarray(self.cfg.bridge.codebook_sizes)
        return (np.abs(frames)[:, None] * 1000 + np.arange(len(sizes))).astype(np.int64) % sizes


# A turn's prompt is fed in three parts (prefix + <audio_start>, the audio, the assistant prompt):
# the first two feeds' logits are never sampled.
PROMPT = [0, 0]
EOS_FRAME = [64, 0, 0, 0, 0, 0, 0, 0]  # tiny codebook 0 has 64 entries: index 64 is EOS
FRAME = [1, 2, 3, 4, 5, 6, 7, 8]


def test_interleaved_turn_follows_the_token_scheme(greedy_cfg: ModelConfig) -> None:
    tok = greedy_cfg.tokens
    # One entry per feed: prompt -> "Hi" <audiogen_start>; (its feed, 2 frames); <audiogen_end> -> "ok,"
    # (clause stop); (feed, 1 frame); <audiogen_end> -> "x" <eos>; (feed, 1 frame); <audiogen_end>.
    script = PROMPT + [ord("H"), ord("i"), tok.audiogen_start, 0, 0, 0, ord("o"), ord("k"), ord(","), 0, 0,
              ord("x"), tok.eos, 0, 0, 0]
    frames = [FRAME, FRAME, EOS_FRAME, FRAME, EOS_FRAME, FRAME, EOS_FRAME]
    backend = Scripted(greedy_cfg, script, frames)
    loop = SpeechLoop(greedy_cfg, backend, ByteCodec())
    events = list(loop.respond(np.ones((3, 8), dtype=np.int64)))
    result = collect(iter(events), 240)
    assert result.text == "Hiok,x"
    assert result.reason == "eos"
    assert backend.decoded == [2, 1, 1]
    assert isinstance(events[-1], TurnEnd)
    fed = backend.fed
    prompt_end = fed.index(tok.assistant)
    assert fed[prompt_end - 1] == tok.audiotext_start
    assert fed[:1] == [tok.system] and fed.count(tok.audio_pad) == 3 + 2 + 1 + 1
    # the clause step's last token (",") and the final eos are replaced by <audiogen_start>, never fed
    assert ord(",") not in fed and tok.eos not in fed
    # no <audiogen_end> after the segment of the step that ended in eos (the demo feeds none)
    assert fed.count(tok.audiogen_start) == 3 and fed.count(tok.audiogen_end) == 2
    assert fed[-1] == tok.audio_pad


def test_segment_stops_at_frame_limit_and_eos_without_text_ends_turn(greedy_cfg: ModelConfig) -> None:
    """At the frame limit (5 here, 500 published) the last frame is spoken but never fed: as in the demo, its
    position is given <audiogen_end>."""
    tok = greedy_cfg.tokens
    # feeds: <audiogen_start>, frames 1-4 (frame 5 is not fed), <audiogen_end> -> eos
    backend = Scripted(greedy_cfg, PROMPT + [ord("a"), tok.audiogen_start] + [0] * 5 + [tok.eos], [FRAME] * 5)
    events = list(SpeechLoop(greedy_cfg, backend, ByteCodec()).respond(np.ones((2, 8), dtype=np.int64)))
    segments = [e for e in events if isinstance(e, AudioSegment)]
    assert [len(s.codes) for s in segments] == [5]  # audio.max_new_tokens
    assert backend.decoded == [5]  # all five are decoded
    answer = backend.fed[backend.fed.index(tok.audiogen_start):]
    assert answer == [tok.audiogen_start] + [tok.audio_pad] * 4 + [tok.audiogen_end]
    assert backend.fed_codes[-4:] == [FRAME] * 4
    assert isinstance(events[-1], TurnEnd) and events[-1].reason == "eos"


def test_text_step_token_limit_and_max_rounds(greedy_cfg: ModelConfig) -> None:
    """After the last allowed segment (max_rounds, 100 published) one more text step is shown, never spoken."""
    greedy_cfg.generation.max_rounds = 2
    backend = Scripted(greedy_cfg, PROMPT + [ord("a")] * 40, [FRAME, EOS_FRAME] * 4)
    events = list(SpeechLoop(greedy_cfg, backend, ByteCodec()).respond(np.ones((1, 8), dtype=np.int64)))
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert texts == ["a" * 6] * 3
    assert [type(e).__name__ for e in events[-2:]] == ["TextDelta", "TurnEnd"]  # no segment after the third
    assert backend.decoded == [1, 1]
    assert events[-1].reason == "max_rounds"


def test_audio_min_new_tokens_holds_the_segment_open(greedy_cfg: ModelConfig) -> None:
    """``audio.min_new_tokens`` bans code 0's EOS before that many frames (``--segment-frames``: a chosen clause
    length on any checkpoint); the same script ends its segment after one frame without it."""
    tok = greedy_cfg.tokens

    def segments(min_frames: int, script: list[int]) -> list[int]:
        greedy_cfg.generation.audio.min_new_tokens = min_frames
        greedy_cfg.generation.audio.max_new_tokens = 3
        backend = Scripted(greedy_cfg, PROMPT + [tok.audiogen_start] + script, [FRAME, EOS_FRAME, EOS_FRAME])
        events = list(SpeechLoop(greedy_cfg, backend, ByteCodec()).respond(np.ones((1, 8), dtype=np.int64)))
        codes = [e.codes for e in events if isinstance(e, AudioSegment)]
        assert all(c[:, 0].max() < greedy_cfg.bridge.codebook_sizes[0] for c in codes)  # no EOS code kept
        return [len(c) for c in codes]

    assert segments(0, [0, 0, tok.eos]) == [1]
    assert segments(3, [0, 0, 0, tok.eos]) == [3]


def test_min_new_tokens_is_checked(greedy_cfg: ModelConfig) -> None:
    from bcaudio.config.base import ConfigError

    gen = greedy_cfg.generation
    gen.audio.min_new_tokens = gen.audio.max_new_tokens + 1
    with pytest.raises(ConfigError, match="min_new_tokens must be in 0 .. max_new_tokens"):
        gen.validate()
    gen.audio.min_new_tokens = 0
    gen.text.min_new_tokens = 2
    with pytest.raises(ConfigError, match="generation.text: min_new_tokens applies to the audio phase only"):
        gen.validate()


def test_codebooks_after_the_first_never_pick_eos(greedy_cfg: ModelConfig) -> None:
    tok = greedy_cfg.tokens
    bad = [1, 32, 32, 16, 16, 16, 16, 16]  # every later codebook "wants" its EOS index
    backend = Scripted(greedy_cfg, PROMPT + [tok.audiogen_start, 0, 0, tok.eos], [bad, EOS_FRAME])
    events = list(SpeechLoop(greedy_cfg, backend, ByteCodec()).respond(np.ones((1, 8), dtype=np.int64)))
    codes = next(e for e in events if isinstance(e, AudioSegment)).codes
    sizes = greedy_cfg.bridge.codebook_sizes
    assert all(codes[0, i] < sizes[i] for i in range(1, 8))


def test_multi_turn_prompt_has_system_once(greedy_cfg: ModelConfig) -> None:
    tok = greedy_cfg.tokens
    backend = Scripted(greedy_cfg, PROMPT + [tok.eos] + PROMPT + [tok.eos], [])
    loop = SpeechLoop(greedy_cfg, backend, ByteCodec())
    list(loop.respond(np.ones((1, 8), dtype=np.int64)))
    list(loop.respond(np.ones((1, 8), dtype=np.int64)))
    assert backend.fed.count(tok.system) == 1 and backend.fed.count(tok.user) == 2


def test_split_clauses_merges_short_pieces() -> None:
    marks = [",", "!", "?", "，", "。", ". "]
    text = "Hi, there. This is a longer clause, and another one! ok"
    assert split_clauses(text, marks, 10) == ["Hi, there. This is a longer clause,", "and another one! ok"]


def test_context_overflow_drops_oldest_turns_and_keeps_the_system_prompt(greedy_cfg: ModelConfig) -> None:
    tok = greedy_cfg.tokens
    backend = Scripted(greedy_cfg, (PROMPT + [tok.eos]) * 3, [])
    system_len = 1 + len(greedy_cfg.generation.system_prompt.encode())
    max_context = system_len + 35  # a turn here is 25 positions: one fits beside the system prompt, two do not
    loop = SpeechLoop(greedy_cfg, backend, ByteCodec(), max_context=max_context)
    for _ in range(3):
        events = list(loop.respond(np.ones((20, 8), dtype=np.int64)))
        assert events[-1].reason == "eos"
        assert len(loop.context) <= max_context
    assert -1 in backend.fed  # a re-prefill happened
    assert loop.context[0] == tok.system and loop.context[system_len] == tok.user
    assert loop.context.count(tok.user) == 1  # only the newest turn is left
    after = backend.fed[len(backend.fed) - backend.fed[::-1].index(-1):]
    assert after[:system_len] == loop.context[:system_len]  # the system prompt was prefilled again


def test_a_turn_longer_than_the_context_ends_cleanly(greedy_cfg: ModelConfig) -> None:
    backend = Scripted(greedy_cfg, PROMPT, [])
    loop = SpeechLoop(greedy_cfg, backend, ByteCodec(), max_context=40)
    events = list(loop.respond(np.ones((60, 8), dtype=np.int64)))
    assert [type(e) for e in events] == [TurnEnd] and events[0].reason == "context_full"


def test_streamed_text_never_shows_half_a_character(greedy_cfg: ModelConfig) -> None:
    """é is two bytes: the first token's delta waits, the second shows the whole character."""
    tok = greedy_cfg.tokens
    backend = Scripted(greedy_cfg, [0xC3, 0xA9, ord("!"), tok.eos], [])
    events = list(SpeechLoop(greedy_cfg, backend, ByteCodec()).respond_text(np.ones((1, 8), dtype=np.int64)))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    texts = [e.text for e in deltas if e.text]
    assert texts == ["é", "!"]  # the first byte's delta shows nothing but keeps its id
    assert all(e.ids for e in deltas) and len(deltas) == 3
    assert "\ufffd" not in "".join(texts)


def test_turn_end_carries_timings(greedy_cfg: ModelConfig) -> None:
    tok = greedy_cfg.tokens
    backend = Scripted(greedy_cfg, PROMPT + [ord("a"), tok.audiogen_start, 0, 0, tok.eos], [FRAME, EOS_FRAME])
    end = list(SpeechLoop(greedy_cfg, backend, ByteCodec()).respond(np.ones((1, 8), dtype=np.int64)))[-1]
    assert set(end.timings) == {"first_text", "first_audio", "total"}
    assert 0 <= end.timings["first_text"] <= end.timings["first_audio"] <= end.timings["total"]


def test_a_streamed_segment_plays_before_its_last_frame(greedy_cfg: ModelConfig) -> None:
    """With ``stream.chunk_frames`` 2, the first piece comes after two frames, while the segment goes on."""
    tok = greedy_cfg.tokens
    greedy_cfg.generation.stream.chunk_frames = 2
    script = PROMPT + [ord("a"), tok.audiogen_start] + [0] * 5 + [tok.eos]
    backend = Scripted(greedy_cfg, script, [FRAME] * 5)
    events = []
    for event in SpeechLoop(greedy_cfg, backend, ByteCodec()).respond(np.ones((2, 8), dtype=np.int64)):
        if isinstance(event, AudioSegment) and not events_have_audio(events):
            assert backend.fed.count(tok.audio_pad) == 2 + 2  # the user's two codes and two answer frames
        events.append(event)
    pieces = [e for e in events if isinstance(e, AudioSegment)]
    assert [(len(p.codes), p.final) for p in pieces] == [(2, False), (2, False), (1, True)]
    result = collect(iter(events), 240)
    assert [len(c) for c in result.segment_codes()] == [5]
    assert result.waveform(240).size == greedy_cfg.decoded_frames(5) * greedy_cfg.vocoder.samples_per_frame


def events_have_audio(events: list) -> bool:
    return any(isinstance(e, AudioSegment) for e in events)
