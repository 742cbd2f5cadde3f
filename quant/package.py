"""``quantize_package``: an fp32 model package -> a new package with each graph at its recipe's precision.

The source is verified (sha256 of every file) and must be fp32: quantizing a quantized graph
compounds the error and the accuracy report would compare against the wrong baseline.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime

from bcaudio.atomic import atomic_folder
from bcaudio.digests import sha256_file
from bcaudio.graph_entry import graph_entry
from bcaudio.quant.blocks import quantize_blocks
from bcaudio.quant.fp16 import quantize_fp16
from bcaudio.quant.int8 import quantize_int8
from bcaudio.quant.recipes import FP32, QuantError, Recipe, load_recipe
from bcaudio.runtime.package.manifest import MANIFEST, Manifest, load_manifest

# int8 as weight-only 8-bit blocks rather than dynamic int8: the decode-loop graphs, whose MatMul weights are
# constants (more accurate than dynamic int8 on small's llm at the same speed: docs/quantization-choices.md).
BLOCK_INT8_GRAPHS = ("llm", "audio_head")


def convert_graph(precision: str, src: Path, dst: Path, graph: str, recipe: Recipe,
                  progress: Callable[[str], None]) -> list[Path]:
    """``src`` -> ``dst`` at ``precision`` with the converter ``bcaudio quantize`` uses for ``graph``."""
    if precision == "fp16":
        return quantize_fp16(src, dst, graph)
    if precision == "int8" and graph in BLOCK_INT8_GRAPHS:
        return quantize_blocks(src, dst, graph, 8, recipe.block_size, progress)
    if precision == "int8":
        return quantize_int8(src, dst, graph)
    if precision == "int4":
        return quantize_blocks(src, dst, graph, 4, recipe.block_size, progress, rounding=recipe.int4_rounding)
    raise QuantError(f"no converter for precision {precision!r}")


def check_source(src: Path, recipe: Recipe) -> Manifest:
    """The verified fp32 manifest of ``src``; one-line errors for a quantized, corrupt or mismatched package."""
    manifest = load_manifest(src, verify=True)
    quantized = {g: e.precision for g, e in manifest.graphs.items() if e.precision != FP32}
    if manifest.recipe != FP32 or quantized:
        raise QuantError(f"{src}: already quantized (recipe {manifest.recipe!r}); quantize the fp32 package it was "
                         "made from instead")
    missing = [g for g, p in recipe.precisions.items() if p != FP32 and g not in manifest.graphs]
    if missing:
        raise QuantError(f"recipe {recipe.name!r} names graph(s) {missing} that {src} does not have; "
                         f"it has {', '.join(manifest.graphs)}")
    return manifest


def quantize_package(src: Path, recipe: str | Path | Recipe, out: Path,
                     progress: Callable[[str], None] = print, overwrite: bool = False) -> Manifest:
    """Write ``out``: the graphs of ``src`` at ``recipe``'s precisions, the tokenizer, and a manifest that records
    precision and recipe per graph and for the package. Returns that manifest.

    Built beside ``out`` and swapped in once complete and sha256-verified; replacing a package needs ``overwrite``.
    """
    src, out = Path(src), Path(out)
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise QuantError(f"--out {out} is the source package or inside it; choose a new folder")
    manifest = check_source(src, recipe)
    start = time.perf_counter()
    with atomic_folder(out, overwrite, "package", log=progress) as stage:
        entries = {}
        for i, (name, entry) in enumerate(manifest.graphs.items(), 1):
            t0 = time.perf_counter()
            precision = recipe.precision(name)
            graph_src, graph_dst = src / entry.file, stage / entry.file
            if precision == FP32:
                files = []
                for rel in entry.sha256:
                    (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                    files.append(Path(shutil.copyfile(src / rel, stage / rel)))
                files.sort(key=lambda f: f.name != entry.file)
            else:
                files = convert_graph(precision, graph_src, graph_dst, name, recipe, progress)
            entries[name] = graph_entry(stage, files, precision=precision, recipe=recipe.name)
            before = sum((src / rel).stat().st_size for rel in entry.sha256)
            after = sum(f.stat().st_size for f in files)
            progress(f"[{i}/{len(manifest.graphs)}] {name}: {precision}, {before / 1e6:.2f} -> {after / 1e6:.2f} MB "
                     f"({after / before:.2f}x) in {time.perf_counter() - t0:.1f} s")
        tokenizer = {}
        for rel in manifest.tokenizer:
            shutil.copyfile(src / rel, stage / rel)
            tokenizer[rel] = sha256_file(stage / rel)
        quantized = Manifest(
            config=manifest.config, graphs=entries, tokenizer=tokenizer,
            source={**manifest.source, "fp32_package": str(src.resolve()),
                    "fp32_manifest_sha256": sha256_file(src / MANIFEST), "int4_block_size": str(recipe.block_size),
                    "int4_rounding": recipe.int4_rounding},
            versions={**manifest.versions, "onnxruntime_quantization": onnxruntime.__version__},
            recipe=recipe.name)
        quantized.save(stage)
        load_manifest(stage, verify=True)  # every file as the manifest says, before it replaces anything
    progress(f"package written to {out} (recipe {recipe.name}) in {time.perf_counter() - start:.1f} s")
    return quantized
