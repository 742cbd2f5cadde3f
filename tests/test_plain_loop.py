"""SpeechLoop against an independent, plain implementation of the spec §8 loop (tests/plain_loop.py).

Both run on the torch reference; the plain loop has its own prompts, stop rules, sampler and model calls,
so equality here is evidence about the loop itself:
every id and frame fed, the visible text and every code of every segment, over a six-turn conversation
in all four modes (greedy; seeded: three turns, six under `make test-slow`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from plain_loop import PlainLoop, PlainTurn
from tokenizers import Tokenizer

from bcaudio.export.checkpoint import load_checkpoint
from bcaudio.export.reference_backend import TorchBackend
from bcaudio.export.reference_turn import reference_codes
from bcaudio.runtime.generation.speech_loop import SpeechLoop, TurnResult, collect
from bcaudio.runtime.package.text_codec import TextCodec

SPOKEN = "Hello there, this is a test of speech. Is it working well? It is."
HISTORY = "kv"  # the plain loop models SpeechLoop's history "live" (the KV cache as fed), not "published"


class Recorder(TorchBackend):
    """The reference backend, keeping every id and frame SpeechLoop feeds."""

    def reset(self) -> None:
        super().reset()
        self.ids: list[int] = []
        self.codes: list[list[int]] = []

    def feed(self, ids, codes=None):
        k = self.cfg.bridge.num_codebooks
        self.ids += [int(i) for i in ids]
        self.codes += [[0] * k] * len(ids) if codes is None else np.asarray(codes).tolist()
        return super().feed(ids, codes)


def as_plain(result: TurnResult) -> PlainTurn:
    return PlainTurn(result.text_ids, [c.tolist() for c in result.segment_codes()], result.reason)


@pytest.fixture(scope="module")
def ref_and_codes(tiny_exported: tuple[Path, Path], speech_16k: np.ndarray):
    ckpt, _ = tiny_exported
    ref = load_checkpoint(ckpt)
    half = speech_16k.size // 2
    return ckpt, ref, [reference_codes(ref, speech_16k[:half]), reference_codes(ref, speech_16k[half:])]


SIX_TURNS = ["respond", "respond", "respond_text", "transcribe", "speak", "respond"]


@pytest.mark.xfail(strict=True, reason="SpeechLoop now follows issue 14's published edges (frame cap gives "
                   "<audiogen_end>, clause stops on text with special tokens, no <audiogen_end> after EOS, the extra "
                   "text step); tests/plain_loop.py still writes the earlier edges: update it, then drop this mark")
@pytest.mark.parametrize("seed,greedy,modes", [
    (0, True, SIX_TURNS),
    (3, False, ["respond", "speak", "respond_text"]),
    pytest.param(5, False, SIX_TURNS, marks=pytest.mark.slow),
])
def test_speech_loop_equals_the_plain_loop_over_a_conversation(ref_and_codes, seed: int, greedy: bool,
                                                               modes: list[str]) -> None:
    ckpt, ref, (q1, q2) = ref_and_codes
    gen = dataclasses.replace(ref.cfg.generation.greedy() if greedy else ref.cfg.generation, history="live")
    backend = Recorder(ref, seed)
    loop = SpeechLoop(ref.cfg, backend, TextCodec(ckpt / "tokenizer.json"), seed=seed, generation=gen)
    plain = PlainLoop(ref, Tokenizer.from_file(str(ckpt / "tokenizer.json")), gen, seed=seed, history=HISTORY)
    turns = [(mode, SPOKEN if mode == "speak" else (q1, q2)[n % 2]) for n, mode in enumerate(modes)]
    spoken = 0
    for n, (mode, arg) in enumerate(turns):
        got = as_plain(collect(getattr(loop, mode)(arg), 240))
        want = getattr(plain, mode)(arg)
        assert got == want, f"turn {n + 1} ({mode}) differs"
        assert backend.ids == plain.ids and backend.codes == plain.codes, f"turn {n + 1} ({mode}) fed differently"
        spoken += sum(len(s) for s in want.segments)
        assert want.text_ids or want.reason == "eos"
    assert spoken > 0 and len(plain.ids) > 50 * len(modes)  # the conversation had audio and a long context
