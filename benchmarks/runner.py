"""One benchmark run: every variant measured in this process, one after another, on the same weights and ids."""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcaudio.benchmarks.bandwidth import DEFAULT_ARRAY_MB, measure_bandwidth
from bcaudio.benchmarks.decoders import Decoder, OptimumDecoder, PackageDecoder, TorchDecoder
from bcaudio.benchmarks.frame import FRAME_BUDGET_MS, FrameCost, audio_head_ms, frame_llm_ms
from bcaudio.benchmarks.llm_timing import ContextTiming, teacher_forced_logits, time_decoder
from bcaudio.benchmarks.roofline import kv_step_bytes, onnx_step_bytes, torch_step_bytes
from bcaudio.benchmarks.turn import incremental_turn
from bcaudio.benchmarks.workdir import BenchInputs, prepare_inputs
from bcaudio.cli.bench import VARIANTS
from bcaudio.config import ModelConfig
from bcaudio.errors import UserError
from bcaudio.runtime.package.manifest import load_manifest

SCHEMA = "bcaudio-bench/2"  # 2: the frame's llm step timed without logits (frame.llm_ms)
# the targets on the 2-core CPU with the small preset; reported, never asserted
TARGETS = {"int4_vs_optimum_int4": 1.3, "int4_vs_genai_int4": 1.15, "int4_roofline_pct": 75.0,
           "full_frame_ms": FRAME_BUDGET_MS, "first_audio_ms": 1000.0}
Progress = Callable[[str], None]


@dataclass
class BenchOptions:
    preset: str | None = None
    checkpoint: Path | None = None
    package: Path | None = None
    workdir: Path | None = None
    contexts: tuple[int, ...] = (128, 1024)
    iterations: int = 20
    warmup: int = 3
    prefill_repeats: int = 2
    variants: tuple[str, ...] = VARIANTS
    threads: int = 0  # 0: one per core
    bandwidth_mb: int = DEFAULT_ARRAY_MB
    turns: int = 1  # measured turns per bcaudio variant (after one warm-up turn); 0: no turn benchmark
    speech: Path | None = None
    device_profile: str = "auto"
    seed: int = 0
    reexport: bool = False  # export the checkpoint again into the work folder (after an exporter change)
    first_text_tokens: int = 0  # cap the first text round (0: the model decides, up to spec §8's 50)
    segment_frames: int = 0  # every answer segment this many frames, one chosen clause length (0: the model's)
    sessions: tuple[int, ...] = ()  # conversations at once for the sessions-per-box table (empty: none)
    accuracy_steps: int = 32  # teacher-forced decode steps whose logits are compared with the fp32 reference

    def check(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise UserError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        if not self.variants:
            raise UserError("--variants is empty; choose from " + ", ".join(VARIANTS))
        if not self.contexts or min(self.contexts) < 8:
            raise UserError(f"--contexts must be lengths >= 8, got {self.contexts}")
        if self.iterations < 1 or self.warmup < 0 or self.prefill_repeats < 1 or self.turns < 0:
            raise UserError("--iterations and --prefill-repeats must be >= 1, --warmup and --turns >= 0")
        if self.accuracy_steps < 1:
            raise UserError(f"--accuracy-steps must be >= 1, got {self.accuracy_steps}")
        if any(n < 1 or n > 64 for n in self.sessions):
            raise UserError(f"--sessions must be counts 1 .. 64, got {self.sessions}")
        if self.first_text_tokens < 0:
            raise UserError(f"--first-text-tokens must be >= 0 (0: the model decides), got {self.first_text_tokens}")
        if not 0 <= self.segment_frames <= 500:
            raise UserError(f"--segment-frames must be 0 .. 500 (0: the model decides), got {self.segment_frames}")

    @property
    def thread_count(self) -> int:
        return self.threads or os.cpu_count() or 1


def _token_ids(cfg: ModelConfig, length: int, seed: int) -> np.ndarray:
    """Plain text ids below every special token: every variant (Qwen2 has no audio positions) reads the same."""
    lowest_special = min(v for v in cfg.tokens.by_id())
    return np.random.default_rng(seed).integers(0, lowest_special, length)


def _compare(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    diff = logits.astype(np.float64) - reference
    return {"max_abs": float(np.abs(diff).max()),
            "rel_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(reference), 1e-30)),
            "top1_equal": bool(np.argmax(logits) == np.argmax(reference))}


def _compare_steps(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Teacher-forced steps: relative L2 over all of them, and how often the top-1 token agrees."""
    diff = logits.astype(np.float64) - reference
    return {"steps": len(logits), "rel_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(reference), 1e-30)),
            "top1_agreement": float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)))}


def _open(variant: str, inputs: BenchInputs, threads: int, max_length: int) -> tuple[Decoder, int, dict[str, Any]]:
    """-> (decoder, weight bytes read per decode step, what the variant is)."""
    kind, precision = variant.split("-", 1)
    if kind == "genai":
        from bcaudio.benchmarks.genai import GENAI_GRAPH, GenaiDecoder, genai_version

        return GenaiDecoder(variant, inputs.genai, threads, max_length), onnx_step_bytes(inputs.genai / GENAI_GRAPH), {
            "kind": kind, "precision": precision, "source": str(inputs.genai),
            "layout": f"onnxruntime-genai {genai_version()} (its own generator and KV cache)"}
    if kind == "torch":
        from bcaudio.export.checkpoint import load_checkpoint

        llm = load_checkpoint(inputs.checkpoint, parts=["llm"]).llm
        return TorchDecoder(variant, llm, threads), torch_step_bytes(llm), {
            "kind": kind, "precision": precision, "source": str(inputs.checkpoint), "layout": "torch eager"}
    if kind == "optimum":
        graph = inputs.optimum[precision]
        return OptimumDecoder(variant, graph, threads), onnx_step_bytes(graph), {
            "kind": kind, "precision": precision, "source": str(graph), "layout": "optimum-onnx (concatenated KV)"}
    package = inputs.packages[precision]
    decoder = PackageDecoder(variant, package, threads)
    graph = package / load_manifest(package, verify=False).graphs["llm"].file
    return decoder, onnx_step_bytes(graph), {"kind": kind, "precision": precision, "source": str(package),
                                             "layout": decoder.layout}


def _context_figures(t: ContextTiming, weight_bytes: int, kv_bytes: int, bandwidth_gb_s: float) -> dict[str, Any]:
    roofline_ms = (weight_bytes + kv_bytes) / (bandwidth_gb_s * 1e9) * 1000
    return {"prefill_ms": t.prefill_ms, "prefill_tok_s": t.prefill_tok_s, "decode_ms": t.decode_ms,
            "decode_ms_min": t.decode_ms_min, "decode_tok_s": 1000 / t.decode_ms, "kv_bytes_per_step": kv_bytes,
            "roofline_ms": roofline_ms, "roofline_pct": 100 * roofline_ms / t.decode_ms}


def _turn_figures(package: Path, opts: BenchOptions, workdir: Path, progress: Progress) -> dict[str, Any]:
    from bcaudio.runtime.package.profiles import resolve_profile
    from bcaudio.runtime.profiling.profiler import Profiler, speech_input

    profile = resolve_profile(opts.device_profile, lambda _: None)
    profile = dataclasses.replace(profile, session=dataclasses.replace(profile.session,
                                                                       intra_op_threads=opts.thread_count))
    profiler = Profiler(package, profile, seed=opts.seed, log=lambda _: None, live_prefill=True,
                        segment_frames=opts.segment_frames)
    gen = profiler.assistant.loop.gen
    if opts.first_text_tokens:  # a trained model's first clause, which random weights never end early
        gen.first_text = dataclasses.replace(gen.first_text, max_new_tokens=opts.first_text_tokens)
    audio, source = speech_input(opts.speech, profiler.assistant.cfg.frontend.sampling_rate, workdir)
    incremental_turn(profiler, audio)  # warm-up: first-run allocations of every graph
    turns = [incremental_turn(profiler, audio) for _ in range(opts.turns)]
    ranked = sorted(turns, key=lambda t: t.first_audio_ms if t.first_audio_ms is not None else float("inf"))
    median = ranked[(len(ranked) - 1) // 2]  # the median turn by first audio (the lower one of an even count)
    figures = dataclasses.asdict(median)
    figures.update(rtf=median.rtf, speech=source, device_profile=profile.name, flow_steps=profile.generation.flow_steps,
                   stream_chunk_frames=gen.stream.chunk_frames, stream_first_window_frames=gen.stream.window_frames(0),
                   tokenize_left_context_ms=profile.generation.tokenize_left_context_ms,
                   first_text_tokens_cap=opts.first_text_tokens or None,
                   segment_frames=opts.segment_frames or None,
                   first_audio_ms_all=[t.first_audio_ms for t in turns], rtf_all=[t.rtf for t in turns],
                   felt_ms_all=[t.felt_ms for t in turns], min_buffer_s_all=[t.min_buffer_s for t in turns])
    return figures


def _sessions_figures(inputs: BenchInputs, opts: BenchOptions, workdir: Path, progress: Progress) -> dict[str, Any]:
    """Conversations at once on the int4 package (the fp32 one when int4 is not measured)."""
    from bcaudio.benchmarks.sessions import sessions_table
    from bcaudio.runtime.package.profiles import resolve_profile

    profile = resolve_profile(opts.device_profile, lambda _: None)
    profile = dataclasses.replace(profile, session=dataclasses.replace(profile.session,
                                                                       intra_op_threads=opts.thread_count))
    precision = "int4" if "int4" in inputs.packages else "fp32"
    progress(f"sessions: {', '.join(map(str, opts.sessions))} conversations at once on bcaudio-{precision}, "
             "batched and separate")
    return {"variant": f"bcaudio-{precision}", **sessions_table(inputs.packages[precision], profile, opts.speech,
                                                               opts.sessions, workdir, progress)}


def default_workdir(preset: str | None) -> Path:
    """``work/bench-PRESET`` in the current folder (never inside the installed package)."""
    return Path("work") / f"bench-{preset or 'custom'}"


def run_bench(opts: BenchOptions, progress: Progress = print) -> dict[str, Any]:
    """Measure every selected variant; -> the results document (see docs/benchmarks.md for its fields)."""
    opts.check()
    workdir = opts.workdir or default_workdir(opts.preset)
    threads = opts.thread_count
    started = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        progress(f"warning: the machine is busy (1-min load average {load_start[0]:.1f} on {os.cpu_count()} cores): "
                 "other processes share the cores and the memory bus, so the figures are slower and noisier")
    progress(f"bandwidth: summing a {opts.bandwidth_mb} MB array on 1 and {threads} thread(s)")
    bw = measure_bandwidth(opts.bandwidth_mb, threads)
    progress(f"  {bw.single_thread_gb_s:.1f} GB/s on one thread, {bw.all_threads_gb_s:.1f} GB/s on {threads}")
    inputs = prepare_inputs(workdir, opts.preset, opts.checkpoint, opts.package, opts.variants, progress,
                            opts.reexport)
    cfg = load_manifest(inputs.package, verify=False).model_config()
    c = cfg.llm
    # the teacher-forced accuracy steps run on from the shortest context: with one context, past it
    ids = _token_ids(cfg, max(max(opts.contexts), min(opts.contexts) + opts.accuracy_steps) + 1, opts.seed)
    variants: dict[str, dict[str, Any]] = {}
    logits: dict[str, list[np.ndarray]] = {}
    forced: dict[str, np.ndarray] = {}
    for i, variant in enumerate(opts.variants, 1):
        progress(f"[{i}/{len(opts.variants)}] {variant}: loading")
        decoder, weight_bytes, about = _open(variant, inputs, threads, len(ids) + 1)
        timings = time_decoder(decoder, ids, opts.contexts, opts.iterations, opts.warmup, opts.prefill_repeats,
                               progress)
        logits[variant] = [t.logits for t in timings]
        forced[variant] = teacher_forced_logits(decoder, ids, min(opts.contexts), opts.accuracy_steps)
        entry = {**about, "weight_bytes_per_step": weight_bytes, "contexts": {
            str(t.context): _context_figures(t, weight_bytes, kv_step_bytes(c.layers, c.kv_heads, c.head_dim,
                                                                             t.context), bw.best_gb_s)
            for t in timings}}
        if isinstance(decoder, PackageDecoder):
            head = audio_head_ms(decoder, opts.iterations, opts.warmup)
            frame_llm = frame_llm_ms(decoder, ids, opts.contexts, opts.iterations, opts.warmup, opts.seed)
            progress(f"  {variant}: audio head {head:.2f} ms/frame; a frame's llm step (no logits) "
                     + ", ".join(f"{ms:.2f} ms @ {n}" for n, ms in frame_llm.items()))
            entry["audio_head_ms_per_frame"] = head
            entry["frame"] = {str(n): FrameCost(ms, head).figures() for n, ms in frame_llm.items()}
        variants[variant] = entry
        del decoder
        gc.collect()
    reference = next((v for v in ("torch-fp32", "bcaudio-fp32", "optimum-fp32") if v in logits), None)
    for variant, entry in variants.items():
        if reference is not None and variant != reference:
            entry["logits_vs_reference"] = {"reference": reference, **{
                str(n): _compare(mine, ref) for n, mine, ref in zip(opts.contexts, logits[variant], logits[reference],
                                                                     strict=True)},
                "teacher_forced": _compare_steps(forced[variant], forced[reference])}
    if opts.turns:
        for variant in [v for v in opts.variants if v.startswith("bcaudio-")]:
            progress(f"turn: {variant}, spoken input prefilled in chunks, clock from end of speech")
            turn = _turn_figures(inputs.packages[variant.split("-", 1)[1]], opts, workdir, progress)
            fa = f"{turn['first_audio_ms']:.0f} ms" if turn["first_audio_ms"] is not None else "none"
            rtf = f"{turn['rtf']:.2f}" if turn["rtf"] is not None else "n/a"
            progress(f"  {variant}: first audio {fa}, RTF {rtf}")
            variants[variant]["turn"] = turn
            gc.collect()
    sessions = _sessions_figures(inputs, opts, workdir, progress) if opts.sessions else None
    from bcaudio.runtime.profiling.profiler import device_info

    return {"schema": SCHEMA, "preset": cfg.preset, "date": started.isoformat(timespec="seconds"),
            "machine": device_info(["CPUExecutionProvider"]), "threads": threads,
            "settings": {"contexts": list(opts.contexts), "iterations": opts.iterations, "warmup": opts.warmup,
                         "accuracy_steps": opts.accuracy_steps,
                         "prefill_repeats": opts.prefill_repeats, "turns": opts.turns, "workdir": str(workdir)},
            "load_average_1min": {"start": load_start[0], "end": os.getloadavg()[0]},
            "bandwidth": {**dataclasses.asdict(bw), "best_gb_s": bw.best_gb_s},
            "frame_budget_ms": FRAME_BUDGET_MS, "variants": variants, "ratios": ratios(variants, opts.contexts),
            "targets": targets(variants, opts.contexts), "sessions": sessions}


def ratios(variants: dict[str, dict[str, Any]], contexts: Sequence[int]) -> dict[str, dict[str, float]]:
    """Decode speed of each variant over each baseline present, per context: ``base_ms / variant_ms``."""
    out: dict[str, dict[str, float]] = {}
    for base in ("torch-fp32", "optimum-fp32", "optimum-int4", "genai-int4"):
        if base not in variants:
            continue
        for n in map(str, contexts):
            base_ms = variants[base]["contexts"][n]["decode_ms"]
            out[f"decode_speedup_vs_{base}@{n}"] = {v: base_ms / e["contexts"][n]["decode_ms"]
                                                     for v, e in variants.items() if v != base}
    return out


def targets(variants: dict[str, dict[str, Any]], contexts: Sequence[int]) -> dict[str, dict[str, Any]]:
    """The issue's targets against this run's figures (at the shortest context); missing variants are skipped."""
    n = str(min(contexts))
    out: dict[str, dict[str, Any]] = {}
    int4, base = variants.get("bcaudio-int4"), variants.get("optimum-int4")
    if int4 and base:
        ratio = base["contexts"][n]["decode_ms"] / int4["contexts"][n]["decode_ms"]
        out["int4_vs_optimum_int4"] = {"value": ratio, "target": f">= {TARGETS['int4_vs_optimum_int4']}",
                                       "met": ratio >= TARGETS["int4_vs_optimum_int4"]}
    genai = variants.get("genai-int4")
    if int4 and genai and "logits_vs_reference" in int4 and "logits_vs_reference" in genai:
        for m in map(str, contexts):
            ratio = genai["contexts"][m]["decode_ms"] / int4["contexts"][m]["decode_ms"]
            out[f"int4_vs_genai_int4@{m}"] = {"value": ratio, "target": f">= {TARGETS['int4_vs_genai_int4']}",
                                              "met": ratio >= TARGETS["int4_vs_genai_int4"]}
        mine, theirs = (v["logits_vs_reference"]["teacher_forced"]["rel_l2"] for v in (int4, genai))
        out["int4_logits_rel_l2_vs_genai"] = {"value": mine, "target": f"<= genai-int4's {theirs:.3g}",
                                              "met": mine <= theirs}
    if int4:
        pct = int4["contexts"][n]["roofline_pct"]
        out["int4_roofline_pct"] = {"value": pct, "target": f">= {TARGETS['int4_roofline_pct']}",
                                    "met": pct >= TARGETS["int4_roofline_pct"]}
        frame = int4["frame"][n]["full_frame_ms"]
        out["full_frame_ms"] = {"value": frame, "target": f"<= {TARGETS['full_frame_ms']}",
                                "met": frame <= TARGETS["full_frame_ms"]}
        first = int4.get("turn", {}).get("first_audio_ms")
        if first is not None:
            out["first_audio_ms"] = {"value": first, "target": f"<= {TARGETS['first_audio_ms']}",
                                     "met": first <= TARGETS["first_audio_ms"]}
    return out
