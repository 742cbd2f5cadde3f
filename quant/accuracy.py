"""Accuracy of a quantized package against its fp32 source, both on onnxruntime CPU (no torch).

Per graph, the task-level metrics of ``bcaudio validate`` computed quantized-vs-fp32 on the
same inputs (so the fp32 package is the reference and its own error vs torch is not counted
twice), plus file size and session load time. The tolerances below are the contract each
recipe is tested against (README "Quantization"); a graph a recipe leaves fp32 must match
its source exactly.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bcaudio.atomic import write_text
from bcaudio.config import ModelConfig
from bcaudio.digests import sha256_file
from bcaudio.metrics import rel_l2, snr_db
from bcaudio.quant.recipes import FP32, QuantError
from bcaudio.runtime.generation.flow_solver import CfgEstimator, euler_cfg_solve, onnx_cfg_pair
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.vocoder_noise import harmonic_phases, source_noise
from bcaudio.runtime.package.llm_state import LlmState
from bcaudio.runtime.package.manifest import MANIFEST, Manifest, load_manifest

GREEDY_STEPS = 64
REPORT_JSON = "accuracy.json"
REPORT_MD = "accuracy.md"

# metric -> (">=" | "<=", bound). Which metrics a graph reports is fixed per graph; the bounds per precision.
Bounds = dict[str, tuple[str, float]]
EXACT: dict[str, Bounds] = {
    "audio_tokenizer": {"codes_agreement": (">=", 1.0)},
    "llm": {"greedy_agreement": (">=", 1.0), "top1_agreement": (">=", 1.0), "logits_rel_l2": ("<=", 0.0)},
    "audio_head": {"codes_agreement": (">=", 1.0), "logits_rel_l2": ("<=", 0.0)},
    "flow_prenet": {"mu_rel_l2": ("<=", 0.0)},
    "flow_estimator": {"mel_l1": ("<=", 0.0)},
    "vocoder": {"snr_db": (">=", math.inf)},
}
# The contract, set from `tiny` (random weights, which overstate quantization error) with a margin over what each
# recipe measures there (docs/quantization-choices.md, "The bounds"), and checked to fail on a broken graph.
# Free-running greedy agreement is reported but not bounded for quantized graphs: on random weights the top
# logits are near ties, so one flip in 64 steps (even fp16 flips some) sends the two runs apart for good.
TOLERANCES: dict[str, dict[str, Bounds]] = {
    "fp16": {
        "audio_tokenizer": {"codes_agreement": (">=", 0.95)},
        "llm": {"top1_agreement": (">=", 0.95), "logits_rel_l2": ("<=", 0.005)},
        "audio_head": {"codes_agreement": (">=", 0.98), "logits_rel_l2": ("<=", 0.005)},
        "flow_prenet": {"mu_rel_l2": ("<=", 0.005)},
        "flow_estimator": {"mel_l1": ("<=", 0.01)},
        "vocoder": {"snr_db": (">=", 30.0)},
    },
    "int8": {
        "audio_tokenizer": {"codes_agreement": (">=", 0.9)},
        "llm": {"top1_agreement": (">=", 0.85), "logits_rel_l2": ("<=", 0.06)},
        "audio_head": {"codes_agreement": (">=", 0.93), "logits_rel_l2": ("<=", 0.04)},
        "flow_prenet": {"mu_rel_l2": ("<=", 0.04)},
        "flow_estimator": {"mel_l1": ("<=", 0.02)},
        "vocoder": {"snr_db": (">=", 30.0)},
    },
    "int4": {
        "audio_tokenizer": {"codes_agreement": (">=", 0.55)},
        "llm": {"top1_agreement": (">=", 0.35), "logits_rel_l2": ("<=", 0.5)},
        "audio_head": {"codes_agreement": (">=", 0.65), "logits_rel_l2": ("<=", 0.3)},
        "flow_prenet": {"mu_rel_l2": ("<=", 0.4)},
        "flow_estimator": {"mel_l1": ("<=", 0.15)},
        "vocoder": {"snr_db": (">=", 30.0)},
    },
}


@dataclass
class GraphAccuracy:
    graph: str
    precision: str
    metrics: dict[str, float]
    bounds: dict[str, str]
    size_bytes: int
    fp32_size_bytes: int
    load_ms: float
    fp32_load_ms: float
    passed: bool = False
    failures: list[str] = field(default_factory=list)

    def judge(self, bounds: Bounds) -> GraphAccuracy:
        self.bounds = {m: f"{op} {bound:g}" for m, (op, bound) in bounds.items()}
        for metric, (op, bound) in bounds.items():
            value = self.metrics[metric]
            ok = value >= bound if op == ">=" else value <= bound
            if not ok:
                self.failures.append(f"{metric} = {value:.4g}, needs {op} {bound:g}")
        self.passed = not self.failures
        return self


@dataclass
class AccuracyReport:
    package: str
    fp32_package: str
    recipe: str
    graphs: list[GraphAccuracy]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.graphs)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=2, allow_nan=True) + "\n"

    def table(self) -> str:
        lines = [f"Accuracy of `{self.package}` (recipe {self.recipe}) vs fp32 `{self.fp32_package}`", "",
                 "| graph | precision | size MB | x fp32 | load ms (fp32) | metric | value | bound | result |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for g in self.graphs:
            for i, (metric, value) in enumerate(g.metrics.items()):
                ratio = g.size_bytes / g.fp32_size_bytes
                head = (f"| {g.graph} | {g.precision} | {g.size_bytes / 1e6:.2f} | {ratio:.2f}"
                        f" | {g.load_ms:.0f} ({g.fp32_load_ms:.0f})") if i == 0 else "| | | | |"
                result = ("pass" if g.passed else "FAIL") if i == 0 else ""
                lines.append(f"{head} | {metric} | {value:.4g} | {g.bounds.get(metric, '')} | {result} |")
        lines += ["", f"**{'PASS' if self.passed else 'FAIL'}**"]
        return "\n".join(lines)


def bounds_for(graph: str, precision: str) -> Bounds:
    return EXACT[graph] if precision == FP32 else TOLERANCES[precision][graph]


def _session(path: Path) -> tuple[ort.InferenceSession, float]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    start = time.perf_counter()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session, (time.perf_counter() - start) * 1e3


Pair = tuple[ort.InferenceSession, ort.InferenceSession]  # (quantized, fp32)


class _Probe:
    """Inputs shared by the checks; the llm's hidden states feed the audio head, the prenet's mu the flow."""

    def __init__(self, cfg: ModelConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.hidden: np.ndarray | None = None
        self.mu: np.ndarray | None = None

    def codes(self, frames: int) -> np.ndarray:
        cols = [self.rng.integers(0, n, (1, frames)) for n in self.cfg.bridge.codebook_sizes]
        return np.stack(cols, axis=-1).astype(np.int64)

    def prompt(self) -> tuple[list[int], np.ndarray]:
        """A chat prompt with 12 audio frames: ids (T,) and codes (1, T, K)."""
        t = self.cfg.tokens
        frames = 12
        ids = [t.system, 11, 23, t.user, t.audio_start, *[t.audio_pad] * frames, t.audio_end, t.assistant]
        codes = np.zeros((1, len(ids), self.cfg.bridge.num_codebooks), np.int64)
        codes[0, 5:5 + frames] = self.codes(frames)[0]
        return ids, codes

    def speech(self, seconds: float = 3.0) -> np.ndarray:
        """A voiced-speech stand-in: a gliding harmonic tone with formant-like weights, plus breath noise."""
        rate = self.cfg.frontend.sampling_rate
        t = np.arange(int(seconds * rate)) / rate
        f0 = 140 + 30 * np.sin(2 * np.pi * 1.3 * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        wave = sum(np.sin(k * phase) / k * (1 + np.cos(k / 3)) for k in range(1, 20))
        wave = 0.3 * wave / np.abs(wave).max() + 0.01 * self.rng.standard_normal(t.size)
        return wave.astype(np.float32)[None]


def _llm(s: Pair, probe: _Probe) -> dict[str, float]:
    """Driven through ``LlmState``, so the check works for whichever llm graph layout the package holds."""
    cfg = probe.cfg
    q, f = (LlmState(sess, cfg.llm.kv_heads, cfg.llm.head_dim, cfg.bridge.num_codebooks) for sess in s)
    ids, codes = probe.prompt()
    # free-running greedy: each side fed its own choice (what a user hears)
    same, feed_q, feed_f = 0, (ids, codes), (ids, codes)
    for _ in range(GREEDY_STEPS):
        (lq, _), (lf, _) = q.feed(*feed_q), f.feed(*feed_f)
        same += int(lq.argmax()) == int(lf.argmax())
        feed_q, feed_f = ([int(lq.argmax())], None), ([int(lf.argmax())], None)
    # teacher-forced: both fed the fp32 choice, so every step compares like with like
    q.reset()
    f.reset()
    top1, got, want, hidden, feed = 0, [], [], [], (ids, codes)
    for _ in range(GREEDY_STEPS):
        (lq, _), (lf, h) = q.feed(*feed), f.feed(*feed)
        top1 += int(lq.argmax()) == int(lf.argmax())
        got.append(lq)
        want.append(lf)
        hidden.append(h)
        feed = ([int(lf.argmax())], None)
    probe.hidden = np.stack(hidden).astype(np.float32)  # the fp32 frames' hidden states: the audio head's input
    return {"greedy_agreement": same / GREEDY_STEPS, "top1_agreement": top1 / GREEDY_STEPS,
            "logits_rel_l2": rel_l2(np.stack(got), np.stack(want))}


def _audio_head(s: Pair, probe: _Probe) -> dict[str, float]:
    cfg = probe.cfg
    q, f = s
    hidden = probe.hidden if probe.hidden is not None else probe.rng.standard_normal(
        (16, cfg.llm.hidden_size)).astype(np.float32)
    b = hidden.shape[0]
    past_names = [i.name for i in f.get_inputs()][4:]
    empty = {n: np.zeros((b, cfg.audio_head_heads, 0, cfg.audio_head.head_dim), np.float32) for n in past_names}
    state = {"q": (np.zeros_like(hidden), dict(empty)), "f": (np.zeros_like(hidden), dict(empty))}
    prev = np.zeros(b, np.int64)
    same, got, want = [], [], []
    for pos in range(cfg.bridge.num_codebooks):
        logits = {}
        for key, sess in (("q", q), ("f", f)):
            running, past = state[key]
            out = sess.run(None, {"hidden": hidden, "running": running, "prev_code": prev,
                                  "position": np.array([pos], np.int64), **past})
            logits[key] = out[0]
            state[key] = (out[1], dict(zip(past_names, out[2:], strict=True)))
        same.append(logits["q"].argmax(-1) == logits["f"].argmax(-1))
        got.append(logits["q"])
        want.append(logits["f"])
        prev = logits["f"].argmax(-1).astype(np.int64)  # both follow the fp32 choice
    return {"codes_agreement": float(np.mean(same)),
            "logits_rel_l2": rel_l2(np.concatenate(got, 1), np.concatenate(want, 1))}


def _audio_tokenizer(s: Pair, probe: _Probe) -> dict[str, float]:
    wave = probe.speech()
    (got,), (want,) = (sess.run(None, {"waveform": wave}) for sess in s)
    return {"codes_agreement": float((got == want).mean()) if got.shape == want.shape else 0.0}


def _flow_prenet(s: Pair, probe: _Probe) -> dict[str, float]:
    codes = probe.codes(24)
    (got,), (want,) = (sess.run(None, {"codes": codes}) for sess in s)
    probe.mu = want
    return {"mu_rel_l2": rel_l2(got, want)}


def _flow_estimator(s: Pair, probe: _Probe) -> dict[str, float]:
    cfg = probe.cfg
    mu = probe.mu if probe.mu is not None else probe.rng.standard_normal((1, cfg.flow.mel_bins, 95)).astype(np.float32)
    z = probe.rng.standard_normal(mu.shape).astype(np.float32)
    mask = np.ones((1, 1, mu.shape[-1]), np.float32)

    def pair(sess: ort.InferenceSession) -> CfgEstimator:
        return onnx_cfg_pair(lambda feeds: sess.run(None, feeds)[0])

    got, want = (euler_cfg_solve(pair(sess), z, mu, mask, cfg.flow.diffusion_steps, cfg.flow.cfg_rate) for sess in s)
    return {"mel_l1": float(np.abs(got - want).mean()), "mel_rel_l2": rel_l2(got, want)}


def _vocoder(s: Pair, probe: _Probe) -> dict[str, float]:
    cfg = probe.cfg
    frames = 40
    mel = probe.rng.normal(-5.0, 2.0, (1, cfg.vocoder.num_mels, frames)).astype(np.float32)
    feeds = {"mel": mel, "noise": source_noise(cfg.vocoder, 1, frames, seed=9),
             "harmonic_phase": harmonic_phases(cfg.vocoder, 1, seed=9),
             **SourcePhase(cfg.vocoder.nb_harmonics + 1).feeds(0)}
    got, want = (sess.run(["waveform"], feeds)[0] for sess in s)
    return {"snr_db": snr_db(got, want)}


# Order matters: the llm's hidden states feed the audio head, the prenet's mu feeds the estimator.
CHECKS: dict[str, Callable[[Pair, _Probe], dict[str, float]]] = {
    "audio_tokenizer": _audio_tokenizer, "llm": _llm, "audio_head": _audio_head, "flow_prenet": _flow_prenet,
    "flow_estimator": _flow_estimator, "vocoder": _vocoder}


def _fp32_source(package: Path, manifest: Manifest, fp32: Path | None) -> tuple[Path, Manifest]:
    path = Path(fp32 or manifest.source.get("fp32_package", ""))
    if not str(path) or not (path / MANIFEST).exists():
        raise QuantError(f"{package}: its fp32 source package {str(path)!r} is not there; pass it explicitly")
    recorded = manifest.source.get("fp32_manifest_sha256")
    if recorded and sha256_file(path / MANIFEST) != recorded:
        raise QuantError(f"{path}: is not the fp32 package {package} was made from (manifest sha256 differs)")
    source = load_manifest(path, verify=True)
    if source.recipe != FP32:
        raise QuantError(f"{path}: is not an fp32 package (recipe {source.recipe!r})")
    return path, source


def accuracy_report(package: Path, fp32: Path | None = None, save: bool = True,
                    progress: Callable[[str], None] = print) -> AccuracyReport:
    """Compare ``package`` with its fp32 source (recorded in its manifest, or ``fp32``); save the report inside it."""
    package = Path(package)
    manifest = load_manifest(package, verify=True)
    fp32_path, source = _fp32_source(package, manifest, fp32)
    probe = _Probe(manifest.model_config())
    results = []
    for name, check in CHECKS.items():
        if name not in manifest.graphs:
            continue
        entry, ref = manifest.graphs[name], source.graphs[name]
        q, load_q = _session(package / entry.file)
        f, load_f = _session(fp32_path / ref.file)
        metrics = check((q, f), probe)
        size = sum((package / rel).stat().st_size for rel in entry.sha256)
        size_f = sum((fp32_path / rel).stat().st_size for rel in ref.sha256)
        result = GraphAccuracy(name, entry.precision, metrics, {}, size, size_f, load_q, load_f)
        results.append(result.judge(bounds_for(name, entry.precision)))
        progress(f"  {name} ({entry.precision}): " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                 + ("" if result.passed else "  FAILED: " + "; ".join(result.failures)))
    report = AccuracyReport(str(package), str(fp32_path), manifest.recipe, results)
    if save:
        write_text(package / REPORT_JSON, report.to_json())
        write_text(package / REPORT_MD, report.table() + "\n")
    return report
