"""Checkpoint I/O in the official layout: config.json, safetensors shards (+ index), vocoder, tokenizer.

``init_checkpoint`` writes a deterministic random checkpoint one tensor at a time
(a 7B-shaped one never sits in memory whole); ``load_checkpoint`` reads the same
layout, so a real checkpoint takes the same path. Loading is strict: a missing,
unexpected or mis-shaped key is one line naming the key and both shapes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from bcaudio.atomic import atomic_folder, write_json
from bcaudio.config import ConfigError, GenerationConfig, ModelConfig, from_plain
from bcaudio.config.official import vocoder_widths
from bcaudio.digests import update_with_file
from bcaudio.documents import read_document
from bcaudio.export.random_init import random_tensor
from bcaudio.export.reference import MAIN_PARTS, PARTS, Reference, build_part, is_ignored, part_of
from bcaudio.export.tokenizer_files import save_published_tokenizer

CONFIG = "config.json"
GENERATION = "generation_config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
HIFT_FILE = "hift.pt"
VOCODER_FILES = (HIFT_FILE, "hift.safetensors")
DEFAULT_SHARD_BYTES = 2 * 1024**3

Progress = Callable[[str], None]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as-is; the message names the file or key and the fix."""


def _quiet(_: str) -> None:
    pass


@contextlib.contextmanager
def open_weights(path: Path) -> Iterator[Any]:
    """``safe_open`` with a truncated or corrupt file as one line naming the file (safetensors' own error names
    neither the file nor the fix)."""
    try:
        with safe_open(str(path), "pt") as f:
            yield f
    except (SafetensorError, OSError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({reason}); re-copy it or "
                              "re-create the checkpoint") from None


def finite(name: str, tensor: torch.Tensor, path: Path) -> torch.Tensor:
    """Non-finite weights would export into graphs that answer NaN: refused, naming the tensor."""
    if tensor.is_floating_point() and not _all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(f"{path.name}: tensor {name} has {bad} NaN or infinite value(s); the checkpoint is "
                              "damaged: re-copy it or re-create it")
    return tensor


# 16-bit floats whose exponent bits are all ones are infinities or NaN
_EXPONENT_BITS = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}


def _all_finite(tensor: torch.Tensor) -> bool:
    """``torch.isfinite(tensor).all()``, read with numpy: torch's was the largest single cost of a 7B-width
    export's reading (docs/real-scale.md, "Export time"), and a 16-bit float is finite exactly when its exponent
    bits are not all ones."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype in _EXPONENT_BITS:
        mask = _EXPONENT_BITS[t.dtype]
        return not bool(np.any((t.view(torch.int16).numpy() & mask) == mask))
    if t.dtype in (torch.float32, torch.float64):
        return bool(np.isfinite(t.numpy()).all())
    return bool(torch.isfinite(t).all())


def expected_shapes(cfg: ModelConfig, part: str) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of one part, built on the meta device (free even at 7B)."""
    prefix = PARTS[part][0]
    module = build_part(part, cfg, "meta")
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def init_checkpoint(cfg: ModelConfig, out: Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                    shard_bytes: int = DEFAULT_SHARD_BYTES, progress: Progress = _quiet,
                    parts: Iterable[str] = MAIN_PARTS, overwrite: bool = False) -> Path:
    """Write a random checkpoint of ``cfg`` to ``out`` in the official layout; ``parts`` limits the weights to
    some parts (tests that export one graph at 7B width need not wait for the rest). It is built beside ``out``
    and swapped in whole; an existing checkpoint is replaced only with ``overwrite``."""
    out = Path(out)
    with atomic_folder(out, overwrite, "checkpoint", log=progress) as stage:
        cfg.save(stage / CONFIG)
        write_json(stage / GENERATION, generation_file(cfg))
        shapes: dict[str, tuple[int, ...]] = {}
        for part in parts:
            shapes.update(expected_shapes(cfg, part))
        files = _write_shards(shapes, stage, seed, dtype, shard_bytes, progress)
        progress(f"wrote {len(shapes)} tensors in {len(files)} shard(s)")
        # as published: HiFT is its own fp32 torch state dict (weight_g / weight_v pairs), hift.pt
        vocoder = {k: random_tensor(k, s, seed) for k, s in expected_shapes(cfg, "vocoder").items()}
        torch.save(vocoder, stage / HIFT_FILE)
        save_published_tokenizer(cfg, stage)
    progress(f"checkpoint {cfg.preset} (seed {seed}) written to {out}")
    return out


def generation_file(cfg: ModelConfig) -> dict:
    return {"eos_token_id": cfg.tokens.eos, "pad_token_id": cfg.tokens.eos,
            "bcaudio": dataclasses.asdict(cfg.generation)}


def _write_shards(shapes: dict[str, tuple[int, ...]], out: Path, seed: int, dtype: torch.dtype,
                  shard_bytes: int, progress: Progress) -> list[str]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    temp_names = []
    for name, shape in shapes.items():
        tensor = random_tensor(name, shape, seed).to(dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            temp_names.append(_flush(shards[-1], out, len(temp_names), progress))
            shards[-1], size = {}, 0
        shards[-1][name] = tensor
        size += nbytes
    temp_names.append(_flush(shards[-1], out, len(temp_names), progress))
    if len(temp_names) == 1:
        (out / temp_names[0]).rename(out / SINGLE)
        return [SINGLE]
    n = len(temp_names)
    final = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for temp, name in zip(temp_names, final, strict=True):
        (out / temp).rename(out / name)
        with open_weights(out / name) as f:
            weight_map.update(dict.fromkeys(f.keys(), name))
    total = sum((out / name).stat().st_size for name in final)
    write_json(out / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return final


def _flush(tensors: dict[str, torch.Tensor], out: Path, index: int, progress: Progress) -> str:
    name = f".shard-{index:05d}.tmp"
    save_file(tensors, str(out / name), metadata={"format": "pt"})
    progress(f"  shard {index + 1}: {len(tensors)} tensors")
    return name


# ----- loading -----


def load_config(ckpt: Path, vocoder: Path | None = None) -> ModelConfig:
    """config.json plus generation defaults from generation_config.json (spec defaults when absent), with the
    HiFT widths read from the vocoder's state dict (``vocoder``, else the one beside the checkpoint) when found."""
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: not a folder; pass the checkpoint folder (make one with `bcaudio init`)")
    if (ckpt / "manifest.json").is_file() and not (ckpt / CONFIG).is_file():
        raise CheckpointError(f"{ckpt} is a model package (it has manifest.json), not a checkpoint; pass the "
                              "checkpoint folder it was exported from")
    cfg = ModelConfig.load(ckpt / CONFIG)
    gen_path = ckpt / GENERATION
    if gen_path.exists():
        raw = read_document(gen_path, CheckpointError, "re-copy it or delete it (the spec defaults apply without it)")
        if isinstance(raw, dict) and "bcaudio" in raw:
            cfg.generation = from_plain(GenerationConfig, raw["bcaudio"], f"{gen_path.name}: bcaudio")
    found = vocoder if vocoder is not None else next((ckpt / n for n in VOCODER_FILES if (ckpt / n).is_file()), None)
    if found is not None and Path(found).is_file():
        vocoder_widths(cfg.vocoder, vocoder_shapes(Path(found)))
    return cfg.validate()


def weight_files(ckpt: Path) -> dict[str, Path]:
    """Tensor name -> file, from the index when sharded (every shard it names must exist)."""
    if (ckpt / INDEX).exists():
        try:
            weight_map = json.loads((ckpt / INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{ckpt / INDEX}: corrupt index ({exc}); re-create or re-download it") from None
        missing = sorted({f for f in weight_map.values() if not (ckpt / f).exists()})
        if missing:
            raise CheckpointError(f"{ckpt}: shard {missing[0]} named in {INDEX} is missing")
        return {k: ckpt / f for k, f in weight_map.items()}
    if (ckpt / SINGLE).exists():
        with open_weights(ckpt / SINGLE) as f:
            return dict.fromkeys(f.keys(), ckpt / SINGLE)
    raise CheckpointError(f"{ckpt}: no {SINGLE} or {INDEX}; is this a Baichuan-Audio checkpoint folder?")


def _read(files: dict[str, Path], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    by_file: dict[Path, list[str]] = {}
    for k in keys:
        by_file.setdefault(files[k], []).append(k)
    out = {}
    for path, names in by_file.items():
        with open_weights(path) as f:
            for k in names:
                out[k] = finite(k, f.get_tensor(k).to(torch.float32), path)
    return out


def vocoder_path(ckpt: Path, vocoder: Path | None = None) -> Path:
    """The HiFT state dict: ``vocoder`` when given, else ``hift.pt`` / ``hift.safetensors`` beside the checkpoint."""
    if vocoder is not None:
        if not Path(vocoder).is_file():
            raise CheckpointError(f"--vocoder {vocoder}: no such file; pass the hift.pt of the official code "
                                  "repository (third_party/cosy24k_vocoder/hift.pt)")
        return Path(vocoder)
    for name in VOCODER_FILES:
        if (ckpt / name).is_file():
            return ckpt / name
    raise CheckpointError(f"{ckpt}: no vocoder ({' or '.join(VOCODER_FILES)}); put hift.pt of the official code "
                          "repository (third_party/cosy24k_vocoder/) beside the checkpoint, or pass --vocoder PATH")


def _vocoder_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        with open_weights(path) as f:
            return {k: finite(k, f.get_tensor(k).to(torch.float32), path) for k in f.keys()}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or non-torch file
        raise CheckpointError(f"{path}: not a readable torch state dict ({type(exc).__name__}); re-download it") \
            from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors; pass HiFT's hift.pt")
    return {k: finite(k, v.to(torch.float32), path) for k, v in state.items()}


def vocoder_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the vocoder's tensors (from the header for safetensors)."""
    if path.suffix == ".safetensors":
        with open_weights(path) as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return {k: tuple(v.shape) for k, v in _vocoder_tensors(path).items()}


def check_keys(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str,
               required: Iterable[str] | None = None) -> None:
    """One clear line for the first missing, unexpected or mis-shaped key; only keys in ``required`` (all of
    ``expected`` by default) must be present, every present one must have its expected shape."""
    needed = set(expected if required is None else required)
    for key, shape in expected.items():
        if key not in found:
            if key not in needed:
                continue
            raise CheckpointError(f"{where}: missing tensor {key} (expected shape {list(shape)})")
        if tuple(found[key]) != shape:
            raise CheckpointError(f"{where}: tensor {key} has shape {list(found[key])}, "
                                  f"the config expects {list(shape)}; config.json and weights disagree")
    for key in found:
        if key not in expected and not is_ignored(key):
            raise CheckpointError(f"{where}: unexpected tensor {key} {list(found[key])}; "
                                  "not part of any known module (wrong model family or config?)")


def check_weights(ckpt: Path, cfg: ModelConfig, parts: Iterable[str]) -> dict[str, Path]:
    """The weight files, checked from their headers against ``cfg``: every tensor of ``parts`` present, nothing
    unknown, nothing mis-shaped; -> tensor name -> file."""
    files = weight_files(ckpt)
    expected = {}
    for part in MAIN_PARTS:
        expected.update(expected_shapes(cfg, part))
    required = [k for k in expected if part_of(k) in set(parts)]
    check_keys(expected, file_shapes(files), str(ckpt), required)
    return files


def file_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the safetensors headers only (no tensor data is read)."""
    shapes = {}
    for path in sorted(set(files.values())):
        with open_weights(path) as f:
            for k in f.keys():
                shapes[k] = tuple(f.get_slice(k).get_shape())
    return shapes


def load_checkpoint(ckpt: Path, parts: Iterable[str] | None = None, progress: Progress = _quiet,
                    vocoder: Path | None = None) -> Reference:
    """Load the requested parts (all by default) into fp32 reference modules; ``vocoder``: the HiFT state
    dict when it is not beside the checkpoint."""
    ckpt = Path(ckpt)
    try:
        cfg = load_config(ckpt, vocoder)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    wanted = list(PARTS) if parts is None else list(parts)
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        raise CheckpointError(f"unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    modules: dict[str, nn.Module] = {}
    main = [p for p in wanted if p != "vocoder"]
    if main:
        files = check_weights(ckpt, cfg, main)
        expected = {}
        for part in main:
            expected.update(expected_shapes(cfg, part))
        for part in main:
            keys = [k for k in expected if part_of(k) == part]
            modules[part] = _materialize(part, cfg, _read(files, keys))
            progress(f"loaded {part}: {len(keys)} tensors")
    if "vocoder" in wanted:
        path = vocoder_path(ckpt, vocoder)
        state = _vocoder_tensors(path)
        check_keys(expected_shapes(cfg, "vocoder"), {k: tuple(v.shape) for k, v in state.items()}, str(path))
        modules["vocoder"] = _materialize("vocoder", cfg, state)
        progress("loaded vocoder")
    return Reference(cfg, modules).eval()


def _materialize(part: str, cfg: ModelConfig, official: dict[str, torch.Tensor]) -> nn.Module:
    """Build ``part`` without a random init pass and assign the loaded tensors to it."""
    prefix = PARTS[part][0]
    state = {k[len(prefix):]: v for k, v in official.items()}
    module = build_part(part, cfg, "meta")
    if _has_computed_buffers(module):
        module = build_part(part, cfg, "cpu")  # constants computed in __init__ (windows, bases) must be real
        module.load_state_dict(state, strict=True)
    else:
        module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def _has_computed_buffers(module: nn.Module) -> bool:
    persistent = set(module.state_dict())
    return any(name not in persistent for name, _ in module.named_buffers())


def checkpoint_hash(ckpt: Path) -> str:
    """sha256 over config and weight files, in name order: the manifest's source identity."""
    digest = hashlib.sha256()
    for path in sorted(ckpt.iterdir()):
        if path.suffix in (".json", ".safetensors", ".pt") and path.is_file():
            digest.update(path.name.encode())
            update_with_file(digest, path)
    return digest.hexdigest()
