"""SpeechLoop against an independent, plain implementation of the spec §8 loop (tests/plain_loop.py).

Both run on the torch reference; the plain loop has its own prompts, stop rules, sampler, model calls,
segment decoding and published-history rebuild (a whole re-prefill where SpeechLoop cuts its cache and
prefills the changed span), so equality here is evidence about the loop itself: every id and frame the
model holds, the visible text and every code of every segment, turn after turn, in all four modes, under
the published history (the default) and the live one; greedy and seeded. Each conversation must show
the demo's edges it is meant to check (asserted, not assumed): the frame cap, clause stops, the extra
text step after the last round, an answer rebuilt in its published form. Steps that end in eos are rare on
random weights, so their edges run on an eos-prone copy of the checkpoint (``eos_prone``).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from plain_loop import PlainLoop, PlainTurn
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from bcaudio.export.checkpoint import load_checkpoint
from bcaudio.export.reference_backend import TorchBackend
from bcaudio.export.reference_turn import reference_codes
from bcaudio.runtime.generation.speech_loop import SpeechLoop, TurnResult, collect
from bcaudio.runtime.package.text_codec import TextCodec

SPOKEN = "Hello there, this is a test of speech. Is it working well? It is."


class Recorder(TorchBackend):
    """The reference backend, keeping the ids and frames its cache holds (what SpeechLoop fed, less what it cut)."""

    def reset(self) -> None:
        super().reset()
        self.ids: list[int] = []
        self.codes: list[list[int]] = []

    def truncate(self, position: int) -> None:
        super().truncate(position)
        del self.ids[position:], self.codes[position:]

    def feed(self, ids, codes=None, logits=True):
        k = self.cfg.bridge.num_codebooks
        self.ids += [int(i) for i in ids]
        self.codes += [[0] * k] * len(ids) if codes is None else np.asarray(codes).tolist()
        return super().feed(ids, codes, logits)


def as_plain(result: TurnResult) -> PlainTurn:
    return PlainTurn(result.text_ids, [c.tolist() for c in result.segment_codes()], result.reason)


@pytest.fixture(scope="module")
def ref_and_codes(tiny_exported: tuple[Path, Path], speech_16k: np.ndarray):
    ckpt, _ = tiny_exported
    ref = load_checkpoint(ckpt)
    half = speech_16k.size // 2
    return ckpt, ref, [reference_codes(ref, speech_16k[:half]), reference_codes(ref, speech_16k[half:])]


FRAME_CAP = 4  # tiny's 12 frames a segment lowered: the cap edge is the same, a turn costs a third


def converse(ckpt: Path, ref, user: list[np.ndarray], history: str, seed: int, greedy: bool,
             modes: list[str]) -> tuple[list[PlainTurn], PlainLoop]:
    """The same conversation through SpeechLoop and the plain loop, compared after every turn."""
    gen = dataclasses.replace(ref.cfg.generation.greedy() if greedy else ref.cfg.generation, history=history)
    gen.audio = dataclasses.replace(gen.audio, max_new_tokens=FRAME_CAP)
    backend = Recorder(ref, seed)
    loop = SpeechLoop(ref.cfg, backend, TextCodec(ckpt / "tokenizer.json"), seed=seed, generation=gen)
    plain = PlainLoop(ref, Tokenizer.from_file(str(ckpt / "tokenizer.json")), gen, seed=seed, history=history)
    turns = []
    for n, mode in enumerate(modes):
        arg = SPOKEN if mode == "speak" else user[n % 2]
        got = as_plain(collect(getattr(loop, mode)(arg), gen.crossfade_samples))
        want = getattr(plain, mode)(arg)
        assert got == want, f"turn {n + 1} ({mode}) differs"
        assert backend.ids == plain.ids and backend.codes == plain.codes, f"turn {n + 1} ({mode}) fed differently"
        turns.append(want)
    return turns, plain


def edges(turns: list[PlainTurn], cap: int) -> set[str]:
    """The demo edges a conversation went through."""
    seen = {stop for t in turns for stop in t.stops} | {t.reason for t in turns}
    if any(len(s) == cap for t in turns for s in t.segments):
        seen.add("frame_cap")
    return seen


SIX_TURNS = ["respond", "respond", "respond_text", "transcribe", "speak", "respond"]


@pytest.mark.parametrize("history,seed,greedy,modes", [
    ("published", 0, True, SIX_TURNS),
    ("published", 3, False, ["respond", "respond_text", "respond"]),
    pytest.param("published", 3, False, SIX_TURNS, marks=pytest.mark.slow),
    pytest.param("live", 0, True, SIX_TURNS, marks=pytest.mark.slow),
])
def test_speech_loop_equals_the_plain_loop_over_a_conversation(ref_and_codes, history: str, seed: int, greedy: bool,
                                                               modes: list[str]) -> None:
    ckpt, ref, user = ref_and_codes
    turns, plain = converse(ckpt, ref, user, history, seed, greedy, modes)
    assert {"frame_cap", "clause", "max_rounds"} <= edges(turns, FRAME_CAP)
    assert sum(len(s) for t in turns for s in t.segments) > 0 and len(plain.ids) > 50 * len(modes)
    if history == "published":  # every answer but the last was rebuilt, and each spoken one's form changed
        answers = [m for m in modes[:-1] if m in ("respond", "respond_text")]
        assert len(plain.rebuilt) == len(answers)
        assert all(n > 0 for n, m in zip(plain.rebuilt, answers, strict=True) if m == "respond")


# The eos-prone checkpoint: tiny seed 1 with lm_head's eos row replaced by EOS_GAIN x the sum of the rows of
# three tokens its text steps often pick (so eos competes where they would win, not everywhere). The tokens and
# the gain were chosen by trying them: with them the conversations below go through every eos edge.
EOS_ROWS = (406, 9, 709)
EOS_GAIN = 0.55


@pytest.fixture(scope="module")
def eos_prone(ref_and_codes, tmp_path_factory: pytest.TempPathFactory):
    ckpt, ref, user = ref_and_codes
    out = tmp_path_factory.mktemp("eos_prone") / "ckpt"
    shutil.copytree(ckpt, out)
    weights = load_file(out / "model.safetensors")
    head = weights["lm_head.weight"]
    head[ref.cfg.tokens.eos] = (EOS_GAIN * head[list(EOS_ROWS)].float().sum(0)).to(head.dtype)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out, load_checkpoint(out), user


def eos_edges(turns: list[PlainTurn]) -> Counter:
    """The eos edges of spoken turns, by where the eos came: the first token of the turn (no segment); the end of
    a step with text, in the first round or a later one (its segment is spoken, no ``<audiogen_end>`` after it);
    alone in a later round's step (the segment before it was closed)."""
    seen: Counter = Counter()
    for t in turns:
        if t.reason != "eos" or not t.stops:
            continue
        later = len(t.stops) > 1
        if len(t.segments) == len(t.stops):
            seen["ends_text_later" if later else "ends_text_first_round"] += 1
        else:
            seen["alone_later" if later else "first_token"] += 1
    return seen


EOS_TURNS = ["respond", "respond", "speak", "respond", "respond", "respond"]


EOS_RUNS = ((0, True), (3, False), (5, False))  # (seed, greedy)


def test_speech_loop_equals_the_plain_loop_at_the_eos_edges(eos_prone) -> None:
    """Token for token over conversations whose answers end in eos at each place a step can, the next turn's
    prompt built on each such ending (a TTS turn among them). The edges are asserted over the three runs together:
    which seeded run reaches which edge moves with the torch reference's float rounding, which is not the same from
    one process to the next (seed 5 reached the first-token edge in some processes and not in others)."""
    ckpt, ref, user = eos_prone
    seen: Counter = Counter()
    for seed, greedy in EOS_RUNS:
        turns, plain = converse(ckpt, ref, user, "published", seed, greedy, EOS_TURNS)
        edges = eos_edges(turns)
        assert sum(edges.values()) >= 3 and len(plain.rebuilt) == EOS_TURNS[:-1].count("respond"), (seed, edges)
        seen += edges
    assert set(seen) == {"first_token", "ends_text_first_round", "ends_text_later", "alone_later"}, dict(seen)
