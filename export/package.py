"""``bcaudio export``: a checkpoint -> a model package (ONNX graphs + tokenizer + manifest.json).

Every input is checked before any graph is written (config, shards and their headers, the
vocoder, the tokenizer). Then one graph at a time: the llm and the audio head are built from
the weights and written tensor by tensor, read lazily from the checkpoint (and, with a recipe,
quantized or converted to fp16 as they are written: :mod:`bcaudio.quant.streamed`,
:func:`bcaudio.quant.fp16.plan_fp16`), so memory grows with one layer,
not with the model; the other graphs load only their own parts, are exported and freed.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import onnx
import onnxruntime
import torch

import bcaudio
from bcaudio.atomic import atomic_folder
from bcaudio.config import ConfigError, ModelConfig
from bcaudio.digests import sha256_file
from bcaudio.export.audio_head_graph import build_audio_head_graph
from bcaudio.export.audio_tokenizer import AudioTokenizer, export_audio_tokenizer
from bcaudio.export.checkpoint import (
    CheckpointError,
    check_keys,
    check_weights,
    checkpoint_hash,
    expected_shapes,
    load_checkpoint,
    load_config,
    vocoder_path,
    vocoder_shapes,
)
from bcaudio.export.deferred import Deferred, Rewrite, write_graph
from bcaudio.export.export_audio_head import AUDIO_HEAD_OPSET
from bcaudio.export.export_flow import export_flow_estimator
from bcaudio.export.export_flow_prenet import export_codes_to_mu
from bcaudio.export.export_llm import export_llm
from bcaudio.export.export_vocoder import export_vocoder
from bcaudio.export.fast_llm import build_fast_llm
from bcaudio.export.reference import Reference
from bcaudio.export.tokenizer_files import tokenizer_source, write_package_tokenizer
from bcaudio.export.weights import CheckpointWeights, ShapeWeights, Weights
from bcaudio.graph_entry import graph_entry
from bcaudio.quant.fp16 import plan_fp16, to_fp16
from bcaudio.quant.package import convert_graph
from bcaudio.quant.recipes import Recipe, load_recipe
from bcaudio.quant.streamed import BlockRewrite
from bcaudio.runtime.package.manifest import GRAPHS, Manifest, ManifestError, load_manifest

DEFAULT_OPSET = 17

# graphs exported through torch from loaded parts: graph -> (checkpoint parts it needs, exporter)
Exporter = Callable[[Reference, Path, int], list[Path]]
EXPORTERS: dict[str, tuple[tuple[str, ...], Exporter]] = {
    "audio_tokenizer": (("encoder", "bridge"), lambda r, p, o: export_audio_tokenizer(
        AudioTokenizer(r.cfg, r.encoder, r.bridge), r.cfg, p, o)),
    "llm": (("llm",), lambda r, p, o: export_llm(r.llm, r.cfg, p, o)),  # --llm-graph plain
    "flow_prenet": (("bridge", "detokenizer", "prenet"), lambda r, p, o: export_codes_to_mu(
        r.bridge, r.detokenizer, r.prenet, r.cfg, p, o)),
    "flow_estimator": (("estimator",), lambda r, p, o: export_flow_estimator(r.estimator, r.cfg, p, o)),
    "vocoder": (("vocoder",), lambda r, p, o: export_vocoder(r.vocoder, r.cfg, p, o)),
}
# graphs built from the weights, tensor by tensor: graph -> (parts, builder)
Builder = Callable[[Weights, ModelConfig, int], tuple[onnx.ModelProto, Deferred]]
BUILDERS: dict[str, tuple[tuple[str, ...], Builder]] = {
    "llm": (("llm",), build_fast_llm),  # --llm-graph fast, the default
    "audio_head": (("llm", "audio_head"), lambda w, c, o: build_audio_head_graph(w, c, max(o, AUDIO_HEAD_OPSET))),
}
# The llm graph's two layouts: fused operators with a shared KV buffer (the runtime's default), or the
# torch export (readable, runs on any provider; the oracle the fast graph is tested against).
LLM_GRAPHS = ("fast", "plain")


def _parse_graphs(graphs: Iterable[str] | None) -> list[str]:
    names = list(GRAPHS) if graphs is None else list(graphs)
    unknown = [g for g in names if g not in GRAPHS]
    if unknown:
        raise ManifestError(f"unknown graph(s) {unknown}; choose from {', '.join(GRAPHS)}")
    return names


def _built(name: str, llm_graph: str) -> bool:
    return name in BUILDERS and not (name == "llm" and llm_graph == "plain")


def graph_parts(name: str, llm_graph: str = "fast") -> tuple[str, ...]:
    """The checkpoint parts graph ``name`` is made from."""
    return BUILDERS[name][0] if _built(name, llm_graph) else EXPORTERS[name][0]


def check_inputs(checkpoint: Path, names: list[str], llm_graph: str, vocoder: Path | None
                 ) -> tuple[ModelConfig, dict[str, Path]]:
    """Everything the export will read, checked before anything is written: -> the config and the weight files.

    config.json, the shards the index names and every needed tensor's shape (headers only), the vocoder
    state dict when the vocoder graph is asked for, and the text tokenizer (always: the runtime needs it)."""
    try:
        cfg = load_config(checkpoint, vocoder)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    parts = {p for n in names for p in graph_parts(n, llm_graph)} - {"vocoder"}
    files = check_weights(checkpoint, cfg, parts) if parts else {}
    if "vocoder" in names:
        path = vocoder_path(checkpoint, vocoder)
        check_keys(expected_shapes(cfg, "vocoder"), vocoder_shapes(path), str(path))
    tokenizer_source(checkpoint)
    return cfg, files


def _rewrite(model: onnx.ModelProto, name: str, precision: str, block_size: int) -> Rewrite | None:
    bits = {"int4": 4, "int8": 8}.get(precision)
    return None if bits is None else BlockRewrite(model, name, bits, block_size)


def _torch_export(name: str, checkpoint: Path, path: Path, opset: int, vocoder: Path | None) -> list[Path]:
    """A graph exported through torch from its own parts only, freed before the next graph."""
    ref = load_checkpoint(checkpoint, parts=EXPORTERS[name][0], vocoder=vocoder)
    files = EXPORTERS[name][1](ref, path, opset)
    del ref
    gc.collect()
    return files


def _built_graph(name: str, weights: Weights, cfg: ModelConfig, opset: int, precision: str, recipe: Recipe | None
                 ) -> tuple[onnx.ModelProto, Deferred, Rewrite | None]:
    """A built graph at ``precision``, its weights deferred: block precisions rewrite nodes as each weight is
    read; fp16 is decided on the weight-free graph and each fp16 weight converted as it is read."""
    build = BUILDERS[name][1]
    model, deferred = build(weights, cfg, opset)
    if precision == "fp16":
        _, stand_ins = build(ShapeWeights(weights), cfg, opset)
        shapes = {n: (v.shape, v.dtype) for n, v in ((n, t()) for n, t in stand_ins.thunks.items())}
        model, fp16 = plan_fp16(model, name, shapes)
        for n in fp16:
            deferred.thunks[n] = lambda make=deferred.thunks[n]: to_fp16(make())
        return model, deferred, None
    return model, deferred, None if recipe is None else _rewrite(model, name, precision, recipe.block_size)


def _export_graph(name: str, checkpoint: Path, cfg: ModelConfig, weights: Weights, out: Path, opset: int,
                  llm_graph: str, precision: str, recipe: Recipe | None, vocoder: Path | None,
                  progress: Callable[[str], None]) -> list[Path]:
    """One graph of the package at ``precision``: the built graphs (llm, audio head) are written tensor by tensor
    at every precision; a torch-exported graph is converted from a temporary fp32 graph with ``bcaudio
    quantize``'s converter (it holds one of the smaller graphs)."""
    path = out / f"{name}.onnx"
    if _built(name, llm_graph):
        model, deferred, rewrite = _built_graph(name, weights, cfg, opset, precision, recipe)
        return write_graph(model, deferred, path, rewrite, progress, name)
    if precision == "fp32":
        return _torch_export(name, checkpoint, path, opset, vocoder)
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{name}-fp32-") as tmp:
        source = Path(tmp) / path.name
        _torch_export(name, checkpoint, source, opset, vocoder)
        return convert_graph(precision, source, path, name, recipe, progress)


def export_package(checkpoint: Path, out: Path, graphs: Iterable[str] | None = None, opset: int = DEFAULT_OPSET,
                   progress: Callable[[str], None] = print, llm_graph: str = "fast",
                   recipe: str | Path | Recipe | None = None, vocoder: Path | None = None,
                   overwrite: bool = False) -> Manifest:
    """Write the package of ``checkpoint`` to ``out``; with ``recipe`` (a built-in name or a TOML file) its graphs
    are quantized while they are written, equal to exporting and then running ``bcaudio quantize``.

    The package is built in a folder beside ``out`` and swapped in once complete and sha256-verified: a failed or
    killed export leaves an existing package as it was (replacing one needs ``overwrite``)."""
    checkpoint, out = Path(checkpoint), Path(out)
    names = _parse_graphs(graphs)
    if llm_graph not in LLM_GRAPHS:
        raise ManifestError(f"unknown llm graph {llm_graph!r}; choose one of {', '.join(LLM_GRAPHS)}")
    plan = recipe if recipe is None or isinstance(recipe, Recipe) else load_recipe(recipe)
    start = time.perf_counter()
    cfg, files = check_inputs(checkpoint, names, llm_graph, vocoder)
    progress(f"checked {checkpoint}: {', '.join(names)}" + (f" at recipe {plan.name}" if plan else ""))
    with atomic_folder(out, overwrite, "package", log=progress) as stage:
        weights = CheckpointWeights(files)
        entries = {}
        for i, name in enumerate(names, 1):
            t0 = time.perf_counter()
            precision = plan.precision(name) if plan else "fp32"
            files = _export_graph(name, checkpoint, cfg, weights, stage, opset, llm_graph, precision, plan,
                                  vocoder, progress)
            entries[name] = graph_entry(stage, files, precision=precision, recipe=plan.name if plan else "fp32")
            size = sum(f.stat().st_size for f in files) / 1e6
            progress(f"[{i}/{len(names)}] {name}: {precision}, {size:.1f} MB in {time.perf_counter() - t0:.1f} s"
                     + (" (external data)" if len(files) > 1 else ""))
        tokenizer = {n: sha256_file(stage / n) for n in write_package_tokenizer(checkpoint, cfg, stage)}
        source = {"checkpoint": str(checkpoint), "sha256": checkpoint_hash(checkpoint)}
        versions = {"bcaudio": bcaudio.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                    "onnxruntime": onnxruntime.__version__}
        if plan is not None:
            source["int4_block_size"] = str(plan.block_size)
            versions["onnxruntime_quantization"] = onnxruntime.__version__
        manifest = Manifest(config=cfg.to_dict(), graphs=entries, tokenizer=tokenizer, source=source,
                            versions=versions, recipe=plan.name if plan else "fp32")
        manifest.save(stage)
        load_manifest(stage, verify=True)  # every file as the manifest says, before it replaces anything
    progress(f"package written to {out} in {time.perf_counter() - start:.1f} s")
    return manifest
