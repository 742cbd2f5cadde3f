"""``bcaudio validate``: every graph of a package on onnxruntime CPU against the torch reference.

Per graph: max abs error and relative L2 of its main output on fixed inputs, and
a task-level agreement (codes, greedy tokens, mel L1, SNR). Tolerances are for
fp32 packages; quantized packages carry their own in their accuracy report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bcaudio.export.audio_head import depth_inputs
from bcaudio.export.audio_tokenizer import AudioTokenizer, audio_tokenizer_example_inputs
from bcaudio.export.checkpoint import load_checkpoint
from bcaudio.export.export_audio_head import audio_head_io_names
from bcaudio.export.export_flow import flow_estimator_example_inputs
from bcaudio.export.export_flow_prenet import CodesToMu, codes_to_mu_example_inputs
from bcaudio.export.export_llm import llm_example_inputs
from bcaudio.export.export_vocoder import vocoder_args, vocoder_example_inputs
from bcaudio.export.flow_reference import torch_cfg_estimator
from bcaudio.export.reference import Reference
from bcaudio.metrics import max_abs, rel_l2, snr_db
from bcaudio.runtime.generation.flow_solver import euler_cfg_solve, onnx_cfg_pair
from bcaudio.runtime.package.llm_state import LlmState
from bcaudio.runtime.package.sessions import PackageSessions

GREEDY_STEPS = 32


@dataclass
class Tolerance:
    max_abs: float = 1e-4
    rel_l2: float = 1e-5
    task_min: float | None = None  # agreement/SNR must be >= this
    task_max: float | None = None  # mel L1 must be <= this


# The contract for fp32 packages (README "Validation").
FP32_TOLERANCES = {
    "audio_tokenizer": Tolerance(task_min=1.0),
    "llm": Tolerance(task_min=1.0),
    "audio_head": Tolerance(task_min=1.0),
    "flow_prenet": Tolerance(),
    "flow_estimator": Tolerance(task_max=1e-3),
    # The neural source integrates the *predicted* f0 into a phase: float rounding in f0 grows linearly
    # with the number of samples, so sample-wise error is looser here and SNR is the meaningful check.
    "vocoder": Tolerance(max_abs=1e-3, rel_l2=1e-4, task_min=60.0),
}


@dataclass
class GraphReport:
    graph: str
    max_abs: float
    rel_l2: float
    task_metric: str
    task_value: float
    passed: bool = False

    def judge(self, tol: Tolerance) -> GraphReport:
        ok = self.max_abs <= tol.max_abs or self.rel_l2 <= tol.rel_l2
        if tol.task_min is not None:
            ok = ok and self.task_value >= tol.task_min
        if tol.task_max is not None:
            ok = ok and self.task_value <= tol.task_max
        self.passed = bool(ok)
        return self


def errors(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    return max_abs(got, want), rel_l2(got, want)


Check = Callable[[Reference, PackageSessions, np.ndarray | None], GraphReport]


@torch.no_grad()
def _audio_tokenizer(ref: Reference, s: PackageSessions, speech: np.ndarray | None) -> GraphReport:
    wave = speech if speech is not None else audio_tokenizer_example_inputs(ref.cfg, 3.0, 0)["waveform"][0]
    want = AudioTokenizer(ref.cfg, ref.encoder, ref.bridge)(torch.from_numpy(wave)[None]).numpy()
    (got,) = s.run("audio_tokenizer", {"waveform": wave[None].astype(np.float32)})
    agree = float((got == want).mean()) if got.shape == want.shape else 0.0
    return GraphReport("audio_tokenizer", *errors(got, want), "codes equal", agree)


def _llm_state(ref: Reference, s: PackageSessions) -> LlmState:
    """The runtime's own driver of the llm graph, so validation covers whichever KV layout the package holds."""
    cfg = ref.cfg
    return LlmState(s["llm"], cfg.llm.kv_heads, cfg.llm.head_dim, cfg.bridge.num_codebooks, kv_capacity=4)


@torch.no_grad()
def _llm(ref: Reference, s: PackageSessions, _: np.ndarray | None) -> GraphReport:
    """Last-position logits after a prefill of 5 and a continuation of 9 (a chunked prefill) vs one torch forward."""
    cfg = ref.cfg
    feeds = llm_example_inputs(cfg, batch=1, new=14, past=0, seed=3)
    ids, codes = feeds["input_ids"][0], feeds["audio_codes"][0]
    state, got, want = _llm_state(ref, s), [], []
    for lo, hi in ((0, 5), (5, 14)):
        got.append(state.feed(ids[lo:hi].tolist(), codes[lo:hi])[0])
        logits, _, _ = ref.llm(torch.from_numpy(ids[None, :hi]), torch.from_numpy(codes[None, :hi]),
                               torch.arange(hi)[None], ref.llm.empty_cache(1))
        want.append(logits[0].numpy())
    max_abs, rel = errors(np.stack(got), np.stack(want))
    return GraphReport("llm", max_abs, rel, f"greedy tokens equal ({GREEDY_STEPS} steps)", _greedy_agreement(ref, s))


def _greedy_agreement(ref: Reference, s: PackageSessions) -> float:
    """Fraction of greedy steps where both pick the same token, each fed its own choice."""
    cfg = ref.cfg
    k = cfg.bridge.num_codebooks
    prompt = [cfg.tokens.system, 11, 23, cfg.tokens.user, cfg.tokens.audio_start, cfg.tokens.audio_pad,
              cfg.tokens.audio_end, cfg.tokens.assistant]
    torch_cache = ref.llm.empty_cache(1)
    state = _llm_state(ref, s)
    ids_t = ids_o = prompt
    pos, same = 0, 0
    for _ in range(GREEDY_STEPS):
        n = len(ids_t)
        codes = np.ones((1, n, k), np.int64)
        logits_t, _, torch_cache = ref.llm(torch.tensor([ids_t]), torch.from_numpy(codes),
                                           torch.arange(pos, pos + n)[None], torch_cache)
        logits_o, _ = state.feed(ids_o, codes[0])
        tok_t, tok_o = int(logits_t[0].argmax()), int(logits_o.argmax())
        same += tok_t == tok_o
        ids_t, ids_o, pos = [tok_t], [tok_o], pos + n
    return same / GREEDY_STEPS


@torch.no_grad()
def _audio_head(ref: Reference, s: PackageSessions, _: np.ndarray | None) -> GraphReport:
    cfg = ref.cfg
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, cfg.llm.hidden_size, generator=gen)
    tables = ref.llm.model.audio_embed_layers
    names, _ = audio_head_io_names(cfg)
    codes_t, codes_o, gots, wants = [], [], [], []
    past = {n: np.zeros((2, cfg.audio_head_heads, 0, cfg.audio_head.head_dim), np.float32) for n in names[4:]}
    running, prev = np.zeros((2, cfg.llm.hidden_size), np.float32), np.zeros(2, np.int64)
    for pos in range(cfg.bridge.num_codebooks):
        chosen = torch.tensor(codes_t).T if codes_t else torch.zeros(2, 0, dtype=torch.long)
        pad = torch.zeros(2, cfg.bridge.num_codebooks - chosen.shape[1], dtype=torch.long)
        inputs = depth_inputs(hidden, torch.cat([chosen, pad], dim=1), tables)
        want = ref.audio_head.teacher_forced(inputs)[pos].numpy()
        out = s.run("audio_head", {"hidden": hidden.numpy(), "running": running, "prev_code": prev,
                                   "position": np.array([pos], np.int64), **past})
        got, running, past = out[0], out[1], dict(zip(names[4:], out[2:], strict=True))
        gots.append(got)
        wants.append(want)
        codes_t.append(want.argmax(-1).tolist())
        codes_o.append(got.argmax(-1).tolist())
        prev = np.asarray(codes_t[-1], np.int64)  # both sides follow the reference's choice
    max_abs, rel = errors(np.concatenate(gots, axis=1), np.concatenate(wants, axis=1))
    return GraphReport("audio_head", max_abs, rel, "greedy codes equal", float(np.mean(np.equal(codes_t, codes_o))))


@torch.no_grad()
def _flow_prenet(ref: Reference, s: PackageSessions, _: np.ndarray | None) -> GraphReport:
    codes = codes_to_mu_example_inputs(ref.cfg, frames=17, seed=5)["codes"]
    want = CodesToMu(ref.bridge, ref.detokenizer, ref.prenet)(torch.from_numpy(codes)).numpy()
    (got,) = s.run("flow_prenet", {"codes": codes})
    max_abs, rel = errors(got, want)
    return GraphReport("flow_prenet", max_abs, rel, "mu rel L2", rel)


@torch.no_grad()
def _flow_estimator(ref: Reference, s: PackageSessions, _: np.ndarray | None) -> GraphReport:
    cfg = ref.cfg
    feeds = flow_estimator_example_inputs(cfg, frames=57, seed=6)
    want = ref.estimator(*(torch.from_numpy(feeds[n]) for n in ("x", "mu", "t", "mask"))).numpy()
    (got,) = s.run("flow_estimator", feeds)
    max_abs, rel = errors(got, want)
    # the whole solve: numpy Euler/CFG on the ONNX estimator vs torch
    rng = np.random.default_rng(8)
    mu = feeds["mu"][:1]
    z = rng.standard_normal(mu.shape).astype(np.float32)
    mask = np.ones((1, 1, mu.shape[-1]), np.float32)

    ort_pair = onnx_cfg_pair(lambda feeds: s.run("flow_estimator", feeds)[0])
    mel_o = euler_cfg_solve(ort_pair, z, mu, mask, cfg.flow.diffusion_steps, cfg.flow.cfg_rate)
    mel_t = euler_cfg_solve(torch_cfg_estimator(ref.estimator), torch.from_numpy(z), torch.from_numpy(mu),
                            torch.from_numpy(mask), cfg.flow.diffusion_steps, cfg.flow.cfg_rate).numpy()
    return GraphReport("flow_estimator", max_abs, rel, "mel L1 (full solve)", float(np.abs(mel_o - mel_t).mean()))


@torch.no_grad()
def _vocoder(ref: Reference, s: PackageSessions, _: np.ndarray | None) -> GraphReport:
    feeds = vocoder_example_inputs(ref.cfg, frames=40, seed=9)
    want = ref.vocoder(*vocoder_args(feeds))[0].numpy()
    got = s.run("vocoder", feeds)[0]
    max_abs, rel = errors(got, want)
    return GraphReport("vocoder", max_abs, rel, "SNR dB", snr_db(got, want))


CHECKS: dict[str, Check] = {"audio_tokenizer": _audio_tokenizer, "llm": _llm, "audio_head": _audio_head,
                            "flow_prenet": _flow_prenet, "flow_estimator": _flow_estimator, "vocoder": _vocoder}


def validate_package(package: Path, checkpoint: Path, speech: np.ndarray | None = None,
                     progress: Callable[[str], None] = print) -> list[GraphReport]:
    sessions = PackageSessions(package, log=progress)
    ref = load_checkpoint(checkpoint)
    reports = []
    for name in sessions.manifest.graphs:
        report = CHECKS[name](ref, sessions, speech).judge(FP32_TOLERANCES[name])
        reports.append(report)
        progress(f"  {name}: {'ok' if report.passed else 'FAILED'}")
    return reports


def format_table(reports: list[GraphReport]) -> str:
    lines = ["| graph | max abs err | rel L2 | task metric | value | result |", "|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(f"| {r.graph} | {r.max_abs:.2e} | {r.rel_l2:.2e} | {r.task_metric} | {r.task_value:.4g} | "
                     f"{'pass' if r.passed else 'FAIL'} |")
    return "\n".join(lines)


def reports_json(reports: list[GraphReport]) -> str:
    return json.dumps([asdict(r) for r in reports], indent=2)
