"""The conversation as the published demo holds it (generation.history), and the demo's defaults and edges.

A scripted backend (test_speech_loop.Scripted) plays the model; turn 2's prompt is compared with a
construction of the published history written here from turn 1's events alone: each text step's
string (its last token kept, eos and <audiogen_start>/<audiogen_end> taken out), tokenized again, and
each segment's decoded waveform read back at 16 kHz and tokenized, between <audiogen_start> and
<audiogen_end>.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import soxr
from test_speech_loop import EOS_FRAME, FRAME, PROMPT, ByteCodec, Scripted

from bcaudio.config import GenerationConfig, ModelConfig
from bcaudio.export.tokenizer_files import build_text_tokenizer
from bcaudio.runtime.generation.speech_loop import AudioSegment, SpeechLoop, TextDelta, TurnEnd, crossfade_join
from bcaudio.runtime.package.text_codec import TextCodec

USER = np.ones((3, 8), dtype=np.int64)


class Cached(Scripted):
    """A scripted backend that keeps what its cache holds, supports truncate, and decodes each segment to a
    different tone (so each re-encodes to its own codes)."""

    def __init__(self, cfg: ModelConfig, tokens: list[int], frames: list[list[int]]) -> None:
        super().__init__(cfg, tokens, frames)
        self.cache: list[tuple[int, tuple[int, ...]]] = []
        self.truncations: list[int] = []

    def feed(self, ids: Sequence[int], codes: np.ndarray | None = None, logits: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray]:
        k = self.cfg.bridge.num_codebooks
        rows = np.zeros((len(ids), k), np.int64) if codes is None else np.asarray(codes)
        self.cache.extend((int(i), tuple(int(c) for c in row)) for i, row in zip(ids, rows, strict=True))
        return super().feed(ids, codes, logits)

    def truncate(self, position: int) -> None:
        self.truncations.append(position)
        del self.cache[position:]

    def decode_segment(self, codes: np.ndarray, segment: int, first_code: int = 0, phase=None,
                       flow_steps=None) -> np.ndarray:
        super().decode_segment(codes, segment, first_code, phase, flow_steps)
        n = self.cfg.decoded_frames(len(codes)) * self.cfg.vocoder.samples_per_frame
        t = np.arange(first_code * 1920, first_code * 1920 + n)
        return (0.3 * np.sin(t * 0.01 * (segment + 1)) + 0.05 * (segment + 1)).astype(np.float32)


def turn_one_script(tok) -> tuple[list[int], list[list[int]]]:
    """ "Hi" <audiogen_start>; 4 frames; "ok," (clause stop); 3 frames; "x" <eos>; 2 frames (no <audiogen_end>)."""
    # one entry per feed: a segment's is its <audiogen_start> and its frames
    script = PROMPT + [ord("H"), ord("i"), tok.audiogen_start] + [0] * 5 + [ord("o"), ord("k"), ord(",")] + [0] * 4 \
        + [ord("x"), tok.eos] + [0] * 3
    frames = [FRAME] * 4 + [EOS_FRAME] + [FRAME] * 3 + [EOS_FRAME] + [FRAME] * 2 + [EOS_FRAME]
    return script, frames


def independent_published(cfg: ModelConfig, codec: ByteCodec, events: list, tokenize, crossfade: int
                          ) -> tuple[list[int], np.ndarray]:
    """The demo's record of an answer, rebuilt from its events: per text step the shown text (the scripts here
    use no special tokens inside text), per segment its pieces joined, at 16 kHz, tokenized."""
    tok, k = cfg.tokens, cfg.bridge.num_codebooks
    ids: list[int] = []
    codes: list[np.ndarray] = []
    text, pieces = "", []

    def add(new_ids: list[int], new_codes: np.ndarray | None = None) -> None:
        ids.extend(new_ids)
        codes.append(np.zeros((len(new_ids), k), np.int64) if new_codes is None else new_codes)

    for event in events:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, AudioSegment):
            pieces.append(event.waveform)
            if event.final:
                add(codec.encode(text))
                wave16k = soxr.resample(crossfade_join(pieces, crossfade), 24000, 16000, quality="HQ")
                frames = tokenize(wave16k.astype(np.float32))
                block = np.zeros((len(frames) + 2, k), np.int64)
                block[1:-1] = frames
                add([tok.audiogen_start] + [tok.audio_pad] * len(frames) + [tok.audiogen_end], block)
                text, pieces = "", []
    add(codec.encode(text))
    return ids, np.concatenate(codes)


def user_turn(cfg: ModelConfig, codec: ByteCodec, first: bool) -> tuple[list[int], np.ndarray]:
    tok, k = cfg.tokens, cfg.bridge.num_codebooks
    ids = ([tok.system] + codec.encode(cfg.generation.system_prompt) if first else []) + [tok.user, tok.audio_start]
    ids += [tok.audio_pad] * len(USER) + [tok.audio_end, tok.audiotext_start, tok.assistant]
    codes = np.zeros((len(ids), k), np.int64)
    codes[ids.index(tok.audio_pad):ids.index(tok.audio_end)] = USER
    return ids, codes


def test_turn_two_prompt_is_the_published_history_of_turn_one(greedy_cfg: ModelConfig) -> None:
    tok = greedy_cfg.tokens
    script, frames = turn_one_script(tok)
    backend = Cached(greedy_cfg, script + [0] + PROMPT + [tok.eos], frames)  # [0]: the re-prefill's feed
    codec = ByteCodec()
    loop = SpeechLoop(greedy_cfg, backend, codec)
    first = list(loop.respond(USER))
    assert first[-1].reason == "eos" and len(backend.decoded) == 3
    second = list(loop.respond(USER))
    assert second[-1].reason == "eos" and second[-1].timings["history"] >= 0  # settled by turn 2's start
    assert len(backend.tokenized) == 3  # each segment re-encoded once

    parts = [user_turn(greedy_cfg, codec, True), independent_published(greedy_cfg, codec, first, backend.tokenize,
                                                                        240), user_turn(greedy_cfg, codec, False)]
    want_ids = [i for p in parts for i in p[0]]
    want_codes = np.concatenate([p[1] for p in parts])
    assert loop.context == want_ids  # turn 2's answer was eos alone: the context ends at its prompt
    np.testing.assert_array_equal(np.concatenate(loop._codes), want_codes)
    assert [i for i, _ in backend.cache] == want_ids  # what the model was fed, after the cut
    np.testing.assert_array_equal(np.array([c for _, c in backend.cache]), want_codes)
    # the published text keeps the clause step's last token, which the live turn replaced by <audiogen_start>
    answer = want_ids[want_ids.index(tok.assistant) + 1:want_ids.index(tok.user, want_ids.index(tok.assistant))]
    assert ord(",") in answer and answer.count(tok.audiogen_end) == 3 and tok.eos not in answer


def test_settle_cuts_the_cache_at_the_first_position_that_changes(greedy_cfg: ModelConfig) -> None:
    """"Hi" and <audiogen_start> are the same in both forms: the cache is cut after them, not at the answer's start."""
    tok = greedy_cfg.tokens
    script, frames = turn_one_script(tok)
    backend = Cached(greedy_cfg, script + [0], frames)
    loop = SpeechLoop(greedy_cfg, backend, ByteCodec())
    list(loop.respond(USER))
    answer_start = loop.context.index(tok.assistant) + 1
    live_length = len(loop.context)
    assert loop.settle_history() and loop.history_seconds is not None
    assert backend.truncations == [answer_start + 3]  # H, i, <audiogen_start> kept
    assert len(loop.context) != live_length and [i for i, _ in backend.cache] == loop.context
    assert loop.settle_history() and backend.truncations == [answer_start + 3]  # settled once: nothing more to do


def test_a_cancelled_settle_changes_nothing_and_the_next_turn_does_it(greedy_cfg: ModelConfig) -> None:
    tok = greedy_cfg.tokens
    script, frames = turn_one_script(tok)
    backend = Cached(greedy_cfg, script + [0] + PROMPT + [tok.eos], frames)
    loop = SpeechLoop(greedy_cfg, backend, ByteCodec())
    list(loop.respond(USER))
    live = list(loop.context)
    assert not loop.settle_history(cancelled=lambda: True)
    assert loop.context == live and backend.truncations == [] and backend.tokenized == []
    list(loop.respond(USER))
    assert len(backend.truncations) == 1 and len(backend.tokenized) == 3


def test_barge_in_keeps_only_the_pieces_heard_re_encoded(greedy_cfg: ModelConfig) -> None:
    """Segments streamed in pieces of 2 frames; the user heard 4 pieces: the first segment (3 pieces) and the first
    piece of the second. The history keeps those, re-encoded, and the texts before them; nothing after."""
    tok = greedy_cfg.tokens
    greedy_cfg.generation.stream.chunk_frames = 2
    script, frames = turn_one_script(tok)
    backend = Cached(greedy_cfg, script + [0, 0] + PROMPT + [tok.eos], frames)
    codec = ByteCodec()
    loop = SpeechLoop(greedy_cfg, backend, codec)
    events = list(loop.respond(USER))
    pieces = [e for e in events if isinstance(e, AudioSegment)]
    assert [p.final for p in pieces][:4] == [False, False, True, False]
    turn_start = loop.turn_starts[-1]
    # as LiveSession does: cut the live cache after the third piece's frames, then say how many pieces were heard
    boundary = turn_start + loop._log.steps[1].piece_ends[0]
    loop.interrupt_at(boundary, heard=4)
    assert loop.context[-1] == tok.audiogen_end and len(loop.context) == boundary + 1
    list(loop.respond(USER))
    heard_events = events[:next(i for i, e in enumerate(events) if e is pieces[3]) + 1]
    heard_events[-1] = AudioSegment(pieces[3].codes, pieces[3].waveform, final=True)  # the cut closes it
    answer, answer_codes = independent_published(greedy_cfg, codec, heard_events, backend.tokenize, 240)
    start = loop.context.index(tok.assistant) + 1
    assert loop.context[start:start + len(answer)] == answer
    np.testing.assert_array_equal(np.concatenate(loop._codes)[start:start + len(answer)], answer_codes)
    assert loop.context[start + len(answer)] == tok.user  # "x" and the third segment were never heard
    assert [i for i, _ in backend.cache] == loop.context


def test_live_history_keeps_the_generated_cache(greedy_cfg: ModelConfig) -> None:
    """history = "live": no re-encoding, no cut; turn 2 follows the generated answer (replaced tokens, generated
    codes, no <audiogen_end> after the last segment)."""
    tok = greedy_cfg.tokens
    greedy_cfg.generation.history = "live"
    script, frames = turn_one_script(tok)
    backend = Cached(greedy_cfg, script + PROMPT + [tok.eos], frames)
    loop = SpeechLoop(greedy_cfg, backend, ByteCodec())
    list(loop.respond(USER))
    live = list(loop.context)
    end = list(loop.respond(USER))[-1]
    assert "history" not in end.timings and backend.tokenized == [] and backend.truncations == []
    assert loop.context[:len(live)] == live and live[-1] == tok.audio_pad and ord(",") not in live
    assert loop.context[len(live)] == tok.user


def test_history_setting_is_checked() -> None:
    gen = GenerationConfig(history="kv")
    with pytest.raises(ValueError, match="generation.history must be one of published, live"):
        gen.validate()


def test_default_system_prompt_is_the_demos(greedy_cfg: ModelConfig) -> None:
    """The demo's default system prompt, which also selects the voice, opens the conversation."""
    prompt = "请用【邻家女声】这个声音回答问题。"
    assert GenerationConfig().system_prompt == prompt and greedy_cfg.generation.system_prompt == prompt
    backend = Cached(greedy_cfg, PROMPT + [greedy_cfg.tokens.eos], [])
    list(SpeechLoop(greedy_cfg, backend, ByteCodec()).respond(USER))
    assert backend.fed[:1 + len(prompt.encode())] == [greedy_cfg.tokens.system] + list(prompt.encode())


def test_clause_stop_matches_the_text_with_special_tokens(greedy_cfg: ModelConfig) -> None:
    """"." <special> " " is no ". " stop in the demo's string matching (the special token's text lies between), so
    the step goes on to the ","; without the special token ". " stops it at the space."""
    tok = greedy_cfg.tokens
    greedy_cfg.generation.max_rounds = 1

    def second_step(middle: list[int]) -> list[str]:
        script = PROMPT + [ord("a"), tok.audiogen_start, 0, 0, ord(".")] + middle + [ord(" "), ord("b"), ord(","),
                                                                                    ord("c")]
        events = list(SpeechLoop(greedy_cfg, Cached(greedy_cfg, script, [FRAME, EOS_FRAME]), ByteCodec())
                      .respond(USER))
        assert isinstance(events[-1], TurnEnd)
        return [e.text for e in events if isinstance(e, TextDelta)]

    assert second_step([]) == ["a", ". "]
    assert second_step([tok.user]) == ["a", ". b,"]


@pytest.fixture
def bpe(greedy_cfg: ModelConfig, tmp_path) -> TextCodec:
    """The tiny preset's BPE tokenizer: a text generated as other tokens than its own encoding re-encodes apart."""
    path = tmp_path / "tokenizer.json"
    build_text_tokenizer(greedy_cfg).save(str(path))
    return TextCodec(path)


@pytest.mark.parametrize("mode", ["respond_text", "transcribe", "speak"])
def test_turn_two_prompt_after_each_mode(greedy_cfg: ModelConfig, bpe: TextCodec, mode: str) -> None:
    """The demo's text mode keeps its answer as the string it showed, tokenized again with the next prompt
    (web_demo/s2s_gradio_demo_cosy_multiturn.py); its TTS and ASR are one-shot scripts with no conversation
    (base_tts_demo.py, base_asr_demo.py), so those turns stay in the history as they were fed."""
    tok = greedy_cfg.tokens
    answer = bpe.encode("in") + bpe.encode("g")  # "ing" generated in two tokens
    assert bpe.encode(bpe.decode(answer)) != answer
    script = answer + [tok.eos] if mode != "speak" else []
    backend = Cached(greedy_cfg, script, [FRAME, EOS_FRAME] * 4)
    loop = SpeechLoop(greedy_cfg, backend, bpe)
    first = list(getattr(loop, mode)("Hello there, this is a test." if mode == "speak" else USER))
    assert first[-1].reason == ("done" if mode == "speak" else "eos")
    as_fed = list(loop.context)
    assert loop.settle_history()
    backend.tokens.extend(PROMPT + [tok.eos])
    assert list(loop.respond(USER))[-1].reason == "eos"

    if mode == "respond_text":
        ids, _ = user_turn(greedy_cfg, bpe, True)
        history = ids[:-2] + [tok.assistant] + bpe.encode("ing")  # the text prompt has no <audiotext_start>
    else:
        history = as_fed
        assert mode == "speak" or history[-len(answer):] == answer  # the transcript as generated
    second, _ = user_turn(greedy_cfg, bpe, mode == "transcribe")  # transcribe gives no system prompt
    assert loop.context == history + second
    assert [i for i, _ in backend.cache] == loop.context and backend.tokenized == []
