"""``bcaudio quantize-table``: every recipe of a package -> one table of size, accuracy and decode speed.

Per recipe the package is quantized (one after the other: each quantization holds whole graphs in memory;
the peak on ``small`` is in docs/quantization-choices.md),
measured against its fp32 source (:func:`accuracy_report`) and timed on this CPU: the llm's decode
step at a fixed context and the audio head's frame (K depth steps), both through the runtime's own
drivers (``LlmState`` via ``OrtBackend``), so the timing follows whatever graph layout the package holds.
fp16 is not timed: it is the CUDA recipe, and CPU fp16 kernels are slower than fp32 (toolchain notes).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bcaudio.atomic import write_json, write_text
from bcaudio.benchmarks.decoders import PackageDecoder
from bcaudio.benchmarks.frame import audio_head_ms
from bcaudio.benchmarks.llm_timing import time_decoder
from bcaudio.quant.accuracy import AccuracyReport, accuracy_report
from bcaudio.quant.package import quantize_package
from bcaudio.quant.recipes import FP32, QuantError, load_recipe
from bcaudio.runtime.package.manifest import load_manifest

SCHEMA = "bcaudio-quantize-table/1"
UNTIMED = ("fp16",)  # CUDA recipe


@dataclass
class Speed:
    threads: int
    context: int
    llm_decode_ms: float
    audio_head_frame_ms: float


@dataclass
class RecipeRow:
    recipe: str
    package: str
    quantize_s: float
    accuracy: dict
    speed: Speed | None


def measure_speed(package: Path, threads: int, context: int, iterations: int = 20, warmup: int = 3) -> Speed:
    """Median llm decode ms/token with ``context`` past positions, and median audio-head ms per frame."""
    decoder = PackageDecoder(package.name, package, threads)
    cfg = decoder.sessions.cfg
    lowest_special = min(cfg.tokens.by_id())
    ids = np.random.default_rng(0).integers(0, lowest_special, context + 1)
    (timing,) = time_decoder(decoder, ids, [context], iterations, warmup, 1, lambda _: None)
    return Speed(threads, context, timing.decode_ms, audio_head_ms(decoder, iterations, warmup))


def _cell(g: dict) -> str:
    return "<br>".join(f"{m} {v:.3g}" for m, v in g["metrics"].items() if m != "greedy_agreement")


def markdown(rows: list[RecipeRow], fp32_speed: Speed, source: str, command: str) -> str:
    graphs = [g["graph"] for g in rows[0].accuracy["graphs"]]
    lines = [f"Quantization of `{source}` on this CPU ({platform.processor() or platform.machine()}, "
             f"{fp32_speed.threads} threads), made by:", "", f"    {command}", "",
             "Size: MB (x fp32). Accuracy: the accuracy report's metrics against the fp32 package "
             "(teacher-forced top-1 and logits rel L2 over 64 llm steps; codes agreement; mel L1 of a full flow "
             "solve; vocoder SNR), pass/fail against the recipe's bounds. Speed: llm decode ms/token at "
             f"{fp32_speed.context} past positions, audio head ms/frame (median); fp16 is the CUDA recipe and "
             "is not timed on CPU.", "",
             "| recipe | " + " | ".join(graphs) + " | pass | llm ms/token | head ms/frame |",
             "|---|" + "---|" * (len(graphs) + 3)]
    fp32_sizes = {g["graph"]: g["fp32_size_bytes"] for g in rows[0].accuracy["graphs"]}
    lines.append("| fp32 | " + " | ".join(f"{fp32_sizes[g] / 1e6:.0f}" for g in graphs)
                 + f" | | {fp32_speed.llm_decode_ms:.1f} | {fp32_speed.audio_head_frame_ms:.1f} |")
    for row in rows:
        cells = []
        for g in row.accuracy["graphs"]:
            size = f"{g['size_bytes'] / 1e6:.0f} ({g['size_bytes'] / g['fp32_size_bytes']:.2f}x)"
            if g["precision"] == FP32:
                cells.append(f"fp32 {size}")
            else:
                verdict = "pass" if g["passed"] else "**FAIL**"
                cells.append(f"{g['precision']} {size}<br>{_cell(g)}<br>{verdict}")
        speed = (f"{row.speed.llm_decode_ms:.1f} | {row.speed.audio_head_frame_ms:.1f}" if row.speed
                 else "n/a (CUDA) | n/a")
        lines.append(f"| {row.recipe} | " + " | ".join(cells)
                     + f" | {'yes' if row.accuracy['passed'] else '**no**'} | {speed} |")
    return "\n".join(lines) + "\n"


def quantize_table(package: Path, recipes: Sequence[str], workdir: Path, out: Path, threads: int = 2,
                   context: int = 128, keep: bool = False, command: str = "",
                   progress: Callable[[str], None] = print) -> list[RecipeRow]:
    """Quantize ``package`` by each recipe into ``workdir``/<recipe>, measure, and write ``out`` (.md) and the
    same figures as JSON next to it; the quantized packages are removed unless ``keep``."""
    package, workdir, out = Path(package), Path(workdir), Path(out)
    if out.suffix != ".md":
        raise QuantError(f"--out {out}: give a .md path (the JSON goes next to it)")
    for recipe in recipes:
        load_recipe(recipe)  # every name checked before the first long quantization
    if load_manifest(package).recipe != FP32:
        raise QuantError(f"{package}: not an fp32 package; the table compares recipes against fp32")
    progress(f"fp32: timing ({threads} threads, context {context})")
    fp32_speed = measure_speed(package, threads, context)
    rows = []
    for recipe in recipes:
        dst = workdir / Path(recipe).stem
        start = time.perf_counter()
        progress(f"{recipe}: quantizing into {dst}")
        quantize_package(package, recipe, dst, progress=progress, overwrite=True)  # the work folder is the table's
        seconds = time.perf_counter() - start
        report: AccuracyReport = accuracy_report(dst, progress=progress)
        speed = None if Path(recipe).stem in UNTIMED else measure_speed(dst, threads, context)
        rows.append(RecipeRow(report.recipe, str(dst), seconds, json.loads(report.to_json()), speed))
        if speed:
            progress(f"{recipe}: llm {speed.llm_decode_ms:.1f} ms/token, audio head {speed.audio_head_frame_ms:.1f} "
                     "ms/frame")
        if not keep:
            shutil.rmtree(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, markdown(rows, fp32_speed, str(package), command))
    write_json(out.with_suffix(".json"), {"schema": SCHEMA, "package": str(package), "command": command,
                                          "cpu_count": os.cpu_count(), "fp32_speed": asdict(fp32_speed),
                                          "recipes": [asdict(r) for r in rows]})
    progress(f"table written to {out} and {out.with_suffix('.json')}")
    return rows
