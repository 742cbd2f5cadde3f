"""``bcaudio export``: a checkpoint -> a model package (ONNX graphs + tokenizer + manifest.json)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import onnx
import onnxruntime
import torch

import bcaudio
from bcaudio.export.audio_tokenizer import AudioTokenizer, export_audio_tokenizer
from bcaudio.export.checkpoint import checkpoint_hash, load_checkpoint
from bcaudio.export.export_audio_head import export_audio_head
from bcaudio.export.export_flow import export_flow_estimator
from bcaudio.export.export_flow_prenet import export_codes_to_mu
from bcaudio.export.export_llm import export_llm
from bcaudio.export.export_vocoder import export_vocoder
from bcaudio.export.fast_llm import export_fast_llm
from bcaudio.export.reference import Reference
from bcaudio.export.text_tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from bcaudio.graph_entry import graph_entry
from bcaudio.runtime.package.manifest import GRAPHS, Manifest, ManifestError, sha256_file

DEFAULT_OPSET = 17

# graph -> (checkpoint parts it needs, exporter)
Exporter = Callable[[Reference, Path, int], list[Path]]
EXPORTERS: dict[str, tuple[tuple[str, ...], Exporter]] = {
    "audio_tokenizer": (("encoder", "bridge"), lambda r, p, o: export_audio_tokenizer(
        AudioTokenizer(r.cfg, r.encoder, r.bridge), r.cfg, p, o)),
    "llm": (("llm",), lambda r, p, o: export_fast_llm(r.llm, r.cfg, p, o)),  # LLM_GRAPHS picks the layout
    "audio_head": (("llm", "audio_head"), lambda r, p, o: export_audio_head(
        r.audio_head, r.llm.model.audio_embed_layers, r.cfg, p, o)),
    "flow_prenet": (("bridge", "detokenizer", "prenet"), lambda r, p, o: export_codes_to_mu(
        r.bridge, r.detokenizer, r.prenet, r.cfg, p, o)),
    "flow_estimator": (("estimator",), lambda r, p, o: export_flow_estimator(r.estimator, r.cfg, p, o)),
    "vocoder": (("vocoder",), lambda r, p, o: export_vocoder(r.vocoder, r.cfg, p, o)),
}

# The llm graph's two layouts: fused operators with a shared KV buffer (the runtime's default), or the
# torch export (readable, runs on any provider; the oracle the fast graph is tested against).
LLM_GRAPHS: dict[str, Callable[..., list[Path]]] = {"fast": export_fast_llm, "plain": export_llm}


def _parse_graphs(graphs: Iterable[str] | None) -> list[str]:
    names = list(GRAPHS) if graphs is None else list(graphs)
    unknown = [g for g in names if g not in EXPORTERS]
    if unknown:
        raise ManifestError(f"unknown graph(s) {unknown}; choose from {', '.join(GRAPHS)}")
    return names


def export_package(checkpoint: Path, out: Path, graphs: Iterable[str] | None = None, opset: int = DEFAULT_OPSET,
                   progress: Callable[[str], None] = print, llm_graph: str = "fast") -> Manifest:
    names = _parse_graphs(graphs)
    if llm_graph not in LLM_GRAPHS:
        raise ManifestError(f"unknown llm graph {llm_graph!r}; choose one of {', '.join(LLM_GRAPHS)}")
    parts = sorted({p for g in names for p in EXPORTERS[g][0]})
    start = time.perf_counter()
    ref = load_checkpoint(checkpoint, parts=parts, progress=lambda m: progress(f"  {m}"))
    progress(f"loaded {len(parts)} part(s) of {checkpoint} in {time.perf_counter() - start:.1f} s")
    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        path = out / f"{name}.onnx"
        files = (LLM_GRAPHS[llm_graph](ref.llm, ref.cfg, path, opset) if name == "llm"
                 else EXPORTERS[name][1](ref, path, opset))
        entries[name] = graph_entry(out, files)
        size = sum(f.stat().st_size for f in files) / 1e6
        progress(f"[{i}/{len(names)}] {name}: {size:.1f} MB in {time.perf_counter() - t0:.1f} s"
                 + (" (external data)" if len(files) > 1 else ""))
    tokenizer = {}
    for file in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        if (checkpoint / file).exists():
            shutil.copyfile(checkpoint / file, out / file)
            tokenizer[file] = sha256_file(out / file)
    if TOKENIZER_FILE not in tokenizer:
        raise ManifestError(f"{checkpoint}: no {TOKENIZER_FILE}; the runtime needs the text tokenizer")
    manifest = Manifest(
        config=ref.cfg.to_dict(), graphs=entries, tokenizer=tokenizer,
        source={"checkpoint": str(checkpoint), "sha256": checkpoint_hash(checkpoint)},
        versions={"bcaudio": bcaudio.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__},
    )
    manifest.save(out)
    progress(f"package written to {out} in {time.perf_counter() - start:.1f} s")
    return manifest
