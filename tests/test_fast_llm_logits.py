"""The fast llm graph's ``with_logits`` switch: skipping the lm_head changes nothing but the logits.

The speech loop asks for no logits on audio frames and prefills (``Backend.feed(..., logits=False)``); these
tests hold that the graph then gives the same hidden states and cache, an empty (B, 0) logits tensor, and that a
whole voice turn is token-for-token and sample-for-sample the turn that computes every step's logits; graphs
without the input (exported before it, or the torch export) keep working.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.speech_loop import collect
from bcaudio.runtime.package.llm_rows import LlmRows, StepInput
from bcaudio.runtime.package.llm_state import WITH_LOGITS, LlmState
from bcaudio.runtime.package.manifest import load_manifest

QUIET = lambda _: None  # noqa: E731


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _feeds(cfg, batch: int, new: int, past: int, capacity: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = cfg.llm
    ids = rng.integers(0, cfg.tokens.eos, (batch, new))
    ids[:, -1] = cfg.tokens.audio_pad  # the last position an audio frame, as the loop feeds them
    codes = np.stack([rng.integers(0, n, (batch, new)) for n in cfg.bridge.codebook_sizes], axis=-1)
    feeds = {"input_ids": ids.astype(np.int64), "audio_codes": codes.astype(np.int64),
             "seqlens_k": np.full(batch, past + new - 1, np.int32),
             "total_sequence_length": np.array(past + new, np.int32)}
    for i in range(c.layers):
        for kind in ("key", "value"):
            feeds[f"past_{kind}.{i}"] = (rng.standard_normal((batch, c.kv_heads, capacity, c.head_dim)) * 0.5
                                         ).astype(np.float32)
    return feeds


def _old_graph(src: Path, dst: Path) -> Path:
    """The llm graph as exported before ``with_logits``: the If's then branch inlined, the input gone."""
    model = onnx.load(str(src))
    graph = model.graph
    (gate,) = [n for n in graph.node if n.op_type == "If"]
    then = next(a.g for a in gate.attribute if a.name == "then_branch")
    nodes = [n for n in graph.node if n is not gate]
    for node in then.node:
        node.output[:] = ["logits" if o == then.output[0].name else o for o in node.output]
        nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.extend(then.initializer)
    keep = [t for t in graph.initializer if t.name != WITH_LOGITS]
    graph.ClearField("initializer")
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name != WITH_LOGITS]
    graph.ClearField("input")
    graph.input.extend(inputs)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def pkg(tiny_exported: tuple[Path, Path]) -> Path:
    return tiny_exported[1]


@pytest.mark.parametrize(("batch", "new"), [(2, 1), (1, 3)])  # a batched decode step; a prefill
def test_graph_without_logits_gives_the_same_hidden_and_cache(pkg: Path, batch: int, new: int) -> None:
    cfg = load_manifest(pkg).model_config()
    session = _session(pkg / "llm.onnx")
    assert WITH_LOGITS in {i.name for i in session.get_overridable_initializers()}
    feeds = _feeds(cfg, batch=batch, new=new, past=4, capacity=8, seed=0)
    default = session.run(None, feeds)
    on = session.run(None, {**feeds, WITH_LOGITS: np.array(True)})
    off = session.run(None, {**feeds, WITH_LOGITS: np.array(False)})
    assert default[0].shape == on[0].shape == (batch, cfg.llm.vocab_size) and np.array_equal(default[0], on[0])
    assert off[0].shape == (batch, 0) and off[0].dtype == np.float32
    for name, a, b in zip([o.name for o in session.get_outputs()][1:], on[1:], off[1:], strict=True):
        assert np.array_equal(a, b), name  # hidden states and every present, bit for bit


class AlwaysLogits:
    """A backend that computes every step's logits whatever the loop asks, counting the steps asked without."""

    def __init__(self, inner: object, force: bool) -> None:
        self.inner, self.force, self.declined = inner, force, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def feed(self, ids, codes=None, logits=True):
        self.declined += not logits
        got = self.inner.feed(ids, codes, logits or self.force)
        assert (got[0] is None) == (not logits and not self.force)
        return got


@pytest.mark.parametrize("greedy", [True, False])
def test_voice_turn_equals_the_turn_that_computes_every_logit(pkg: Path, speech_16k: np.ndarray,
                                                              greedy: bool) -> None:
    cfg = load_manifest(pkg).model_config()
    generation = cfg.generation.greedy() if greedy else cfg.generation
    generation = dataclasses.replace(generation, history="live")  # one turn: the published history is the next's
    runs, backends = [], []
    for force in (False, True):
        a = VoiceAssistant(pkg, None, seed=5, generation=generation, log=QUIET)
        a.loop.backend = backend = AlwaysLogits(a.backend, force)
        runs.append(collect(a.respond(speech_16k, 16000), 240))
        backends.append(backend)
    skipped, always = runs
    frames = sum(len(c) for c in skipped.segment_codes())
    assert frames >= 1 and backends[0].declined == backends[1].declined >= frames  # every frame's step skipped
    assert skipped.text_ids == always.text_ids and skipped.reason == always.reason
    assert len(skipped.segments) == len(always.segments)
    for s, w in zip(skipped.segments, always.segments, strict=True):
        assert np.array_equal(s.codes, w.codes) and np.array_equal(s.waveform, w.waveform)


class WidthSpy(LlmState):
    """LlmState keeping the width of the logits each bound run returned: what the graph computed."""

    widths: list[int]

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = super()._run_bound(feeds)
        self.widths = [*getattr(self, "widths", []), out[0].shape[-1]]
        return out


def test_a_graph_without_the_input_still_runs(pkg: Path, tmp_path: Path) -> None:
    """Packages exported before ``with_logits``: the lm_head always runs, and the logits asked not for are None;
    the graph that has the input gets it through IO binding (a (1, 0) run)."""
    cfg = load_manifest(pkg).model_config()
    c = cfg.llm
    states = [WidthSpy(_session(path), c.kv_heads, c.head_dim, cfg.bridge.num_codebooks)
              for path in (pkg / "llm.onnx", _old_graph(pkg / "llm.onnx", tmp_path / "old.onnx"))]
    assert [s.skips_logits for s in states] == [True, False]
    rng = np.random.default_rng(1)
    ids = rng.integers(0, cfg.tokens.eos, 6).tolist()
    new, old = (s.feed(ids, logits=False) for s in states)
    assert new[0] is None and old[0] is None and np.array_equal(new[1], old[1])
    new, old = (s.feed([cfg.tokens.audiogen_end]) for s in states)
    assert np.array_equal(new[0], old[0]) and np.array_equal(new[1], old[1])
    assert [s.widths for s in states] == [[0, c.vocab_size], [c.vocab_size] * 2]


def test_batched_rows_compute_logits_when_a_row_reads_them(pkg: Path) -> None:
    cfg = load_manifest(pkg).model_config()
    c, k = cfg.llm, cfg.bridge.num_codebooks
    session = _session(pkg / "llm.onnx")
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, cfg.tokens.eos, n).tolist() for n in (5, 7)]
    codes = rng.integers(0, min(cfg.bridge.codebook_sizes), k)
    results, widths = [], []

    class Spy(LlmRows):
        def _run(self, *args: object) -> tuple[np.ndarray, np.ndarray]:
            out = super()._run(*args)
            widths.append(out[0].shape[-1])
            return out

    for asks in ([True, True], [True, False], [False, False]):
        rows = Spy(session, c.kv_heads, c.head_dim, k)
        members = [rows.join() for _ in prompts]
        prefills = [rows.feed(m, p, logits=ask) for m, p, ask in zip(members, prompts, asks, strict=True)]
        step = rows.step([StepInput(members[0], cfg.tokens.assistant, None, asks[0]),
                          StepInput(members[1], cfg.tokens.audio_pad, codes, asks[1])])
        results.append((prefills, step))
        for (lg, _), ask in zip(prefills + step, asks + asks, strict=True):
            assert (lg is None) == (not ask)
    v = c.vocab_size
    assert widths == [v, v, v, v, 0, v, 0, 0, 0]  # per run: two prefills, one batched step
    want_prefills, want_step = results[0]
    for prefills, step in results[1:]:
        for (lg, hidden), (want_lg, want_hidden) in zip(prefills + step, want_prefills + want_step, strict=True):
            assert np.array_equal(hidden, want_hidden) and (lg is None or np.array_equal(lg, want_lg))
