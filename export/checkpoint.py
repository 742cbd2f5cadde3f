"""Checkpoint I/O in the official layout: config.json, safetensors shards (+ index), vocoder, tokenizer.

``init_checkpoint`` writes a deterministic random checkpoint one tensor at a time
(a 7B-shaped one never sits in memory whole); ``load_checkpoint`` reads the same
layout, so a real checkpoint takes the same path. Loading is strict: a missing,
unexpected or mis-shaped key is one line naming the key and both shapes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from bcaudio.config import ConfigError, GenerationConfig, ModelConfig, from_plain
from bcaudio.export.random_init import random_tensor
from bcaudio.export.reference import MAIN_PARTS, PARTS, Reference, build_part, is_ignored, part_of
from bcaudio.export.text_tokenizer import save_text_tokenizer

CONFIG = "config.json"
GENERATION = "generation_config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
VOCODER_FILES = ("hift.safetensors", "hift.pt")
DEFAULT_SHARD_BYTES = 2 * 1024**3

Progress = Callable[[str], None]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as-is; the message names the file or key and the fix."""


def _quiet(_: str) -> None:
    pass


def expected_shapes(cfg: ModelConfig, part: str) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of one part, built on the meta device (free even at 7B)."""
    prefix = PARTS[part][0]
    module = build_part(part, cfg, "meta")
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def init_checkpoint(cfg: ModelConfig, out: Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                    shard_bytes: int = DEFAULT_SHARD_BYTES, progress: Progress = _quiet) -> Path:
    """Write a random checkpoint of ``cfg`` to ``out`` in the official layout."""
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / CONFIG)
    (out / GENERATION).write_text(json.dumps(generation_file(cfg), indent=2, ensure_ascii=False) + "\n")
    shapes: dict[str, tuple[int, ...]] = {}
    for part in MAIN_PARTS:
        shapes.update(expected_shapes(cfg, part))
    files = _write_shards(shapes, out, seed, dtype, shard_bytes, progress)
    progress(f"wrote {len(shapes)} tensors in {len(files)} shard(s)")
    vocoder = {k: random_tensor(k, s, seed).to(dtype) for k, s in expected_shapes(cfg, "vocoder").items()}
    save_file(vocoder, str(out / VOCODER_FILES[0]), metadata={"format": "pt"})
    save_text_tokenizer(cfg, out)
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
        with safe_open(str(out / name), "pt") as f:
            weight_map.update(dict.fromkeys(f.keys(), name))
    total = sum((out / name).stat().st_size for name in final)
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return final


def _flush(tensors: dict[str, torch.Tensor], out: Path, index: int, progress: Progress) -> str:
    name = f".shard-{index:05d}.tmp"
    save_file(tensors, str(out / name), metadata={"format": "pt"})
    progress(f"  shard {index + 1}: {len(tensors)} tensors")
    return name


# ----- loading -----


def load_config(ckpt: Path) -> ModelConfig:
    """config.json plus generation defaults from generation_config.json (spec defaults when absent)."""
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: not a folder; pass the checkpoint folder (make one with `bcaudio init`)")
    cfg = ModelConfig.load(ckpt / CONFIG)
    gen_path = ckpt / GENERATION
    if gen_path.exists():
        raw = json.loads(gen_path.read_text())
        if "bcaudio" in raw:
            cfg.generation = from_plain(GenerationConfig, raw["bcaudio"], f"{gen_path.name}: bcaudio")
    return cfg.validate()


def _weight_files(ckpt: Path) -> dict[str, Path]:
    """Tensor name -> file, from the index when sharded."""
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
        with safe_open(str(ckpt / SINGLE), "pt") as f:
            return dict.fromkeys(f.keys(), ckpt / SINGLE)
    raise CheckpointError(f"{ckpt}: no {SINGLE} or {INDEX}; is this a Baichuan-Audio checkpoint folder?")


def _read(files: dict[str, Path], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    by_file: dict[Path, list[str]] = {}
    for k in keys:
        by_file.setdefault(files[k], []).append(k)
    out = {}
    for path, names in by_file.items():
        with safe_open(str(path), "pt") as f:
            for k in names:
                out[k] = f.get_tensor(k).to(torch.float32)
    return out


def _vocoder_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    for name in VOCODER_FILES:
        path = ckpt / name
        if path.exists() and name.endswith(".safetensors"):
            with safe_open(str(path), "pt") as f:
                return {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            return {k: v.to(torch.float32) for k, v in state.items()}
    raise CheckpointError(f"{ckpt}: no vocoder state dict ({' or '.join(VOCODER_FILES)})")


def check_keys(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str) -> None:
    """One clear line for the first missing, unexpected or mis-shaped key."""
    for key, shape in expected.items():
        if key not in found:
            raise CheckpointError(f"{where}: missing tensor {key} (expected shape {list(shape)})")
        if tuple(found[key]) != shape:
            raise CheckpointError(f"{where}: tensor {key} has shape {list(found[key])}, "
                                  f"the config expects {list(shape)}; config.json and weights disagree")
    for key in found:
        if key not in expected and not is_ignored(key):
            raise CheckpointError(f"{where}: unexpected tensor {key} {list(found[key])}; "
                                  "not part of any known module (wrong model family or config?)")


def _file_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for path in sorted(set(files.values())):
        with safe_open(str(path), "pt") as f:
            for k in f.keys():
                shapes[k] = tuple(f.get_slice(k).get_shape())
    return shapes


def load_checkpoint(ckpt: Path, parts: Iterable[str] | None = None, progress: Progress = _quiet) -> Reference:
    """Load the requested parts (all by default) into fp32 reference modules."""
    ckpt = Path(ckpt)
    try:
        cfg = load_config(ckpt)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    wanted = list(PARTS) if parts is None else list(parts)
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        raise CheckpointError(f"unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    modules: dict[str, nn.Module] = {}
    main = [p for p in wanted if p != "vocoder"]
    if main:
        files = _weight_files(ckpt)
        expected = {}
        for part in MAIN_PARTS:
            expected.update(expected_shapes(cfg, part))
        check_keys(expected, _file_shapes(files), str(ckpt))
        for part in main:
            keys = [k for k in expected if part_of(k) == part]
            modules[part] = _materialize(part, cfg, _read(files, keys))
            progress(f"loaded {part}: {len(keys)} tensors")
    if "vocoder" in wanted:
        state = _vocoder_tensors(ckpt)
        check_keys(expected_shapes(cfg, "vocoder"), {k: tuple(v.shape) for k, v in state.items()}, f"{ckpt} vocoder")
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
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()
