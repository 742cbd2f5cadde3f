"""`bcaudio info` (and the end of `bcaudio init`): what a checkpoint folder or a model package holds.

For a checkpoint the figures come from what is stored, not from what config.json predicts: tensor
names, shapes and dtypes from the safetensors headers (no tensor data is read, so a 20 GB
checkpoint is summarized in about a second) and the vocoder's state dict; where they disagree with
the config, the summary says which tensors. A package is summarized from its manifest and the
ONNX graphs' headers (loaded without their external data).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

from bcaudio.export.checkpoint import (
    VOCODER_FILES,
    expected_shapes,
    file_shapes,
    load_config,
    open_weights,
    vocoder_shapes,
    weight_files,
)
from bcaudio.export.reference import MAIN_PARTS, PARTS, is_ignored, part_of
from bcaudio.runtime.package.manifest import MANIFEST, load_manifest


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}"
        n /= 1000
    return f"{n:.3g}P{unit}"


def stored_parameters(shapes: dict[str, tuple[int, ...]], vocoder: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Parameters per part as stored (keys skipped by name are not counted)."""
    counts = dict.fromkeys(PARTS, 0)
    for key, shape in shapes.items():
        if not is_ignored(key):
            counts[part_of(key)] += math.prod(shape)
    counts["vocoder"] = sum(math.prod(s) for s in vocoder.values())
    return counts


def _dtypes(files: dict[str, Path]) -> Counter:
    found: Counter = Counter()
    for path in sorted(set(files.values())):
        with open_weights(path) as f:
            for key in f.keys():
                found[f.get_slice(key).get_dtype()] += 1
    return found


def _disagreements(cfg_shapes: dict[str, tuple[int, ...]], shapes: dict[str, tuple[int, ...]]) -> list[str]:
    lines = []
    missing = [k for k in cfg_shapes if k not in shapes]
    unknown = [k for k in shapes if k not in cfg_shapes and not is_ignored(k)]
    wrong = [k for k in cfg_shapes if k in shapes and tuple(shapes[k]) != cfg_shapes[k]]
    if missing:
        lines.append(f"  missing: {len(missing)} tensor(s) config.json implies, e.g. {missing[0]}")
    if unknown:
        lines.append(f"  unknown: {len(unknown)} tensor(s) no part reads, e.g. {unknown[0]}")
    if wrong:
        lines.append(f"  mis-shaped: {len(wrong)} tensor(s), e.g. {wrong[0]} {list(shapes[wrong[0]])} "
                     f"(config.json implies {list(cfg_shapes[wrong[0]])})")
    return lines


def print_checkpoint(ckpt: Path) -> None:
    cfg = load_config(ckpt)
    files = weight_files(ckpt)
    shapes = file_shapes(files)
    hift = next((ckpt / n for n in VOCODER_FILES if (ckpt / n).is_file()), None)
    vocoder = vocoder_shapes(hift) if hift else {}
    counts = stored_parameters(shapes, vocoder)
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    embed = shapes.get("model.embed_tokens.weight", (0, 0))
    ffn = shapes.get("model.layers.0.mlp.gate_proj.weight", (0,))[0]
    llm, tok = cfg.llm, cfg.tokens
    print(f"checkpoint {ckpt}  (preset {cfg.preset})")
    print(f"  stored llm: vocab {embed[0]}, hidden {embed[1]}, {len(layers)} layers, ffn {ffn}; config.json: "
          f"{llm.heads} heads / {llm.kv_heads} kv, head_dim {llm.head_dim}, theta {llm.rope_theta:g}")
    print(f"  audio: {cfg.frontend.num_mel_bins} mels, encoder d {cfg.encoder.d_model} x {cfg.encoder.layers}, "
          f"RVQ {cfg.bridge.num_codebooks} x {cfg.bridge.codebook_sizes} in {cfg.rvq_dim} dims, "
          f"head {cfg.audio_head.layers} layers, detokenizer {cfg.detokenizer.layers} layers")
    f = cfg.flow
    print(f"  flow: prenet {f.prenet_layers} x d {f.prenet_d_model} (hidden {f.prenet_hidden_dim}),"
          f" U-Net {cfg.flow.channels} ({cfg.flow.num_mid_blocks} mid blocks), {cfg.flow.diffusion_steps} steps; "
          f"vocoder {hift.name if hift else 'not found'}: base {cfg.vocoder.base_channels}, "
          f"f0 {cfg.vocoder.f0_channels} channels, {cfg.vocoder.sampling_rate} Hz")
    print(f"  tokens: eos {tok.eos}, audio pad {tok.audio_pad}, audiogen {tok.audiogen_start}/{tok.audiogen_end}")
    print("  stored parameters: " + ", ".join(f"{p} {_human(n)}" for p, n in counts.items())
          + f"; total {_human(sum(counts.values()))}")
    dtypes = _dtypes(files)
    skipped = sum(1 for k in shapes if is_ignored(k))
    print(f"  tensors: {len(shapes)} in {len(set(files.values()))} file(s), dtypes "
          + ", ".join(f"{d} {n}" for d, n in dtypes.most_common())
          + (f"; {skipped} unused by inference (skipped by name)" if skipped else ""))
    expected = {}
    for part in MAIN_PARTS:
        expected.update(expected_shapes(cfg, part))
    problems = _disagreements(expected, shapes)
    if vocoder:
        problems += _disagreements(expected_shapes(cfg, "vocoder"), vocoder)
    print("  matches config.json: " + ("yes" if not problems else "no"))
    for line in problems:
        print(line)
    stored = sorted(p for p in ckpt.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in stored)
    print(f"  files: {len(stored)}, {_human(total, 'B')} on disk: " + ", ".join(p.name for p in stored))


def print_package(package: Path) -> None:
    manifest = load_manifest(package, verify=False)
    cfg = manifest.model_config()
    print(f"package {package}  (recipe {manifest.recipe}, preset {cfg.preset}, "
          f"source {manifest.source.get('checkpoint', '?')})")
    total = 0
    for name, entry in manifest.graphs.items():
        size = sum((package / rel).stat().st_size for rel in entry.sha256 if (package / rel).exists())
        total += size
        print(f"  {name}: {entry.precision}, opset {entry.opset}, {_human(size, 'B')} in {len(entry.sha256)} file(s), "
              f"{len(entry.inputs)} inputs / {len(entry.outputs)} outputs")
    print(f"  llm: hidden {cfg.llm.hidden_size}, {cfg.llm.layers} layers, vocab {cfg.llm.vocab_size}; "
          f"tokenizer: {', '.join(manifest.tokenizer)}")
    print(f"  graphs: {len(manifest.graphs)}, {_human(total, 'B')} on disk")


def print_summary(folder: Path) -> None:
    """A package when ``folder`` has a manifest.json, else a checkpoint."""
    if (folder / MANIFEST).is_file():
        print_package(folder)
    else:
        print_checkpoint(folder)
