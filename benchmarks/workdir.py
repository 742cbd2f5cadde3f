"""What a benchmark run needs on disk, made once and reused: checkpoint, packages, optimum's exports.

Layout of a work folder (every part is skipped when already there and made from the same source):
``ckpt/`` (random checkpoint of the preset), ``pkg-fp32/`` (``bcaudio export``), ``pkg-int8/`` and
``pkg-int4/`` (``bcaudio.quant``), ``hf-qwen2/`` (the text part as a transformers Qwen2),
``optimum-fp32/`` (optimum-onnx's export of it), ``optimum-int4/`` (that graph through the same
int4 quantizer as bcaudio's recipes) and ``genai-int4/`` (onnxruntime-genai's model builder on the
same ``hf-qwen2/``). Reruns only measure.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bcaudio.atomic import write_json
from bcaudio.digests import sha256_file
from bcaudio.errors import UserError
from bcaudio.quant.recipes import BUILTIN, Recipe
from bcaudio.runtime.package.manifest import MANIFEST, load_manifest

Progress = Callable[[str], None]
# only the decode loop's graphs are quantized: the other graphs stay the fp32 package's, so a turn's
# difference between variants is the llm and the audio head
RECIPES = {"int8": Recipe("int8", {"llm": "int8", "audio_head": "int8"},
                          description="8-bit llm and audio head (benchmark)"),
           "int4": BUILTIN["int4"]}
OPTIMUM_GRAPH = "model.onnx"
STAMP = "bcaudio-source.json"


def quantizer_hash() -> str:
    """sha256 of bcaudio.quant's sources: a change to a recipe or a quantizer remakes the cached graphs."""
    import bcaudio.quant

    digest = hashlib.sha256()
    for path in sorted(Path(bcaudio.quant.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _stamp_ok(stamp: Path, expected: dict[str, str]) -> bool:
    return stamp.exists() and json.loads(stamp.read_text()) == expected


@dataclass
class BenchInputs:
    package: Path  # the fp32 package
    checkpoint: Path | None
    packages: dict[str, Path] = field(default_factory=dict)  # precision -> package
    optimum: dict[str, Path] = field(default_factory=dict)  # precision -> optimum-onnx graph
    genai: Path | None = None  # onnxruntime-genai's int4 model folder


def _checkpoint_and_package(workdir: Path, preset: str | None, checkpoint: Path | None, package: Path | None,
                            reexport: bool, progress: Progress) -> tuple[Path | None, Path]:
    if package is not None:
        source = load_manifest(package, verify=False).source.get("checkpoint")
        if checkpoint is None and source and Path(source).is_dir():
            checkpoint = Path(source)
        return checkpoint, package
    if checkpoint is None:
        if preset is None:
            raise UserError("bench needs --preset, --checkpoint or --package")
        checkpoint = workdir / "ckpt"
        if not (checkpoint / "config.json").exists():
            import torch

            from bcaudio.export.checkpoint import init_checkpoint
            from bcaudio.presets import get_preset

            progress(f"init: random {preset} checkpoint in {checkpoint}")
            init_checkpoint(get_preset(preset), checkpoint, dtype=torch.bfloat16, progress=lambda _: None,
                            overwrite=True)  # a folder without config.json is an interrupted init
    package = workdir / "pkg-fp32"
    if reexport or not (package / MANIFEST).exists():  # the quantized packages follow: they record their source
        from bcaudio.export.package import export_package

        progress(f"export: {checkpoint} -> {package}")
        export_package(checkpoint, package, progress=lambda m: progress(f"  {m}"), overwrite=True)
    return checkpoint, package


def _quantized(workdir: Path, fp32: Path, precision: str, progress: Progress) -> Path:
    from bcaudio.quant.package import quantize_package

    out = workdir / f"pkg-{precision}"
    stamp = out.with_name(out.name + ".json")  # beside the package: the package holds only what its manifest lists
    expected = {"fp32_manifest_sha256": sha256_file(fp32 / MANIFEST), "quantizer_sha256": quantizer_hash()}
    if (out / MANIFEST).exists() and _stamp_ok(stamp, expected):
        return out
    progress(f"quantize: {fp32} -> {out} ({precision}: llm + audio head)")
    quantize_package(fp32, RECIPES[precision], out, progress=lambda m: progress(f"  {m}"), overwrite=True)
    write_json(stamp, expected)
    return out


def _hf_qwen2(workdir: Path, checkpoint: Path, stamp: dict[str, str], progress: Progress) -> Path:
    """The checkpoint's text part as a transformers Qwen2 folder: what optimum-onnx and genai's builder read."""
    hf_dir = workdir / "hf-qwen2"
    if not _stamp_ok(hf_dir / STAMP, stamp):
        from bcaudio.export.checkpoint import load_checkpoint
        from bcaudio.export.hf_qwen2 import to_qwen2

        shutil.rmtree(hf_dir, ignore_errors=True)
        progress(f"hf: {checkpoint} -> transformers Qwen2 in {hf_dir}")
        ref = load_checkpoint(checkpoint, parts=["llm"])
        model = to_qwen2(ref.cfg.llm, ref.llm.state_dict())
        model.config.eos_token_id = model.config.pad_token_id = ref.cfg.tokens.eos  # genai's config needs them
        del ref
        # the same rotary as ``None``, spelled out: genai's builder (written for transformers 5) iterates it
        model.config.rope_scaling = {"rope_type": "default"}
        model.save_pretrained(hf_dir)
        del model
        # genai's builder loads the tokenizer too (and writes it beside its model)
        shutil.copy(checkpoint / "tokenizer.json", hf_dir / "tokenizer.json")
        (hf_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
        (hf_dir / STAMP).write_text(json.dumps(stamp))
    return hf_dir


def _optimum(workdir: Path, hf_dir: Path, stamp: dict[str, str], precisions: set[str], progress: Progress
             ) -> dict[str, Path]:
    """optimum-onnx's Qwen2 export of the checkpoint's text part, and its int4 form, keyed by the checkpoint hash."""
    fp32 = workdir / "optimum-fp32"
    if not _stamp_ok(fp32 / STAMP, stamp):
        from optimum.exporters.onnx import main_export

        shutil.rmtree(fp32, ignore_errors=True)
        progress(f"optimum: {hf_dir} -> {fp32}")
        main_export(str(hf_dir), fp32, task="text-generation-with-past", device="cpu", do_validation=False)
        write_json(fp32 / STAMP, stamp)
    out = {"fp32": fp32 / OPTIMUM_GRAPH}
    if "int4" in precisions:
        from bcaudio.quant.blocks import quantize_blocks

        int4 = workdir / "optimum-int4"
        stamp4 = {**stamp, "quantizer_sha256": quantizer_hash()}
        if not _stamp_ok(int4 / STAMP, stamp4):
            shutil.rmtree(int4, ignore_errors=True)
            progress(f"optimum: {fp32} -> {int4} (the int4 recipe's quantizer, block {RECIPES['int4'].block_size})")
            quantize_blocks(fp32 / OPTIMUM_GRAPH, int4 / OPTIMUM_GRAPH, "optimum", 4, RECIPES["int4"].block_size,
                            progress=lambda m: progress(f"  {m}"), rounding=RECIPES["int4"].int4_rounding)
            write_json(int4 / STAMP, stamp4)
        out["int4"] = int4 / OPTIMUM_GRAPH
    return out


def _genai(workdir: Path, hf_dir: Path, stamp: dict[str, str], progress: Progress) -> Path:
    """onnxruntime-genai's model builder (int4, CPU, its defaults) on the same Qwen2 folder; -> its model folder."""
    from bcaudio.benchmarks.genai import build_genai, genai_version

    out = workdir / "genai-int4"
    stamp = {**stamp, "onnxruntime_genai": genai_version()}
    if not _stamp_ok(out / STAMP, stamp):
        shutil.rmtree(out, ignore_errors=True)
        progress(f"genai: {hf_dir} -> {out} (onnxruntime-genai's model builder, int4, cpu)")
        build_genai(hf_dir, out, workdir / "genai-cache")
        (out / STAMP).write_text(json.dumps(stamp))
    return out


def prepare_inputs(workdir: Path, preset: str | None, checkpoint: Path | None, package: Path | None,
                   variants: Iterable[str], progress: Progress, reexport: bool = False) -> BenchInputs:
    """Make what ``variants`` (``kind-precision`` names) need that the work folder does not hold yet; ``reexport``
    exports the checkpoint again (after a change to the exporters)."""
    workdir.mkdir(parents=True, exist_ok=True)
    variants = list(variants)
    checkpoint, fp32 = _checkpoint_and_package(workdir, preset, checkpoint, package, reexport, progress)
    inputs = BenchInputs(fp32, checkpoint, {"fp32": fp32})
    for precision in RECIPES:
        if f"bcaudio-{precision}" in variants:
            inputs.packages[precision] = _quantized(workdir, fp32, precision, progress)
    needs_checkpoint = [v for v in variants if v.startswith(("torch-", "optimum-", "genai-"))]
    if needs_checkpoint and checkpoint is None:
        raise UserError(f"{', '.join(needs_checkpoint)} need the checkpoint and {fp32} does not name one that "
                        "exists: pass --checkpoint")
    optimum = {v.split("-", 1)[1] for v in variants if v.startswith("optimum-")}
    if optimum or "genai-int4" in variants:
        stamp = {"checkpoint_sha256": load_manifest(fp32, verify=False).source.get("sha256",
                                                                                    str(checkpoint.resolve()))}
        hf_dir = _hf_qwen2(workdir, checkpoint, stamp, progress)
        if optimum:
            inputs.optimum = _optimum(workdir, hf_dir, stamp, optimum, progress)
        if "genai-int4" in variants:
            inputs.genai = _genai(workdir, hf_dir, stamp, progress)
    return inputs
