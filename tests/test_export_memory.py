"""Bounded memory at the published width: the 7B llm graph exported straight to int4 grows per layer by little.

The llm of `baichuan-audio-7b` with 1 and with 2 decoder layers (full widths: hidden 3584, ffn 18944,
vocabulary 152064), each exported with ``--recipe int4`` in a child process whose peak RSS is read from
``wait4``. A layer is 0.93 GB of fp32 weights: if the export held the fp32 module or graph, the second
layer would add at least that. Streamed, a layer adds only its protobuf nodes and the quantized bytes
of nothing but the tensor in flight. The absolute peak (the 2.2 GB fp32 embedding and lm_head, one at a
time) must stay under the issue's 10 GB bound, which the full 28-layer model then also meets
(docs/real-scale.md has the measured full-size figures).

Only the llm's weights are written (``init_checkpoint(parts=...)``): the other parts are not read by
``--graphs llm`` and would triple the checkpoint's writing time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from safetensors.torch import load_file, save_file

from bcaudio.export.checkpoint import CONFIG, INDEX, init_checkpoint
from bcaudio.presets import get_preset
from bcaudio.runtime.package.manifest import load_manifest

PER_LAYER_BOUND_GB = 0.5  # measured 2026-12-01: 4.53 GB with 1 layer, 4.57 GB with 2; an fp32 layer is 0.93 GB
PEAK_BOUND_GB = 10.0


def _export_peak_rss_gb(ckpt: Path, out: Path) -> float:
    code = ("import sys; from pathlib import Path; from bcaudio.export.package import export_package; "
            "export_package(Path(sys.argv[1]), Path(sys.argv[2]), graphs=['llm'], recipe='int4', "
            "progress=lambda _: None)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ckpt), str(out)])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return usage.ru_maxrss / 1024**2  # KiB on Linux


def _drop_last_layer(src: Path, dst: Path, layers: int) -> Path:
    """The same checkpoint with ``layers`` decoder layers: the tensors of the others removed, config edited."""
    dst.mkdir()
    raw = json.loads((src / CONFIG).read_text())
    raw["num_hidden_layers"] = layers
    raw.setdefault("bcaudio", {})["preset"] = f"baichuan-audio-7b/layers={layers}"
    for path in src.iterdir():
        if path.name not in (CONFIG, INDEX) and path.suffix != ".safetensors":
            (dst / path.name).write_bytes(path.read_bytes())
    (dst / CONFIG).write_text(json.dumps(raw, indent=2))
    tensors = {}
    for shard in sorted(src.glob("*.safetensors")):
        tensors.update({k: v for k, v in load_file(str(shard)).items()
                        if not any(k.startswith(f"model.layers.{i}.") for i in range(layers, 64))})
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("7b-width")
    two = init_checkpoint(get_preset("baichuan-audio-7b", layers=2), root / "l2", parts=("llm",))
    return {2: two, 1: _drop_last_layer(two, root / "l1", 1)}


def test_7b_width_int4_export_memory_grows_per_layer_not_per_model(checkpoints: dict[int, Path],
                                                                    tmp_path: Path) -> None:
    peaks = {n: _export_peak_rss_gb(ckpt, tmp_path / f"pkg{n}") for n, ckpt in checkpoints.items()}
    figures = f"peak RSS of the int4 llm export at 7B width: 1 layer {peaks[1]:.2f} GB, 2 layers {peaks[2]:.2f} GB"
    print(figures)
    assert peaks[2] - peaks[1] < PER_LAYER_BOUND_GB, figures
    assert max(peaks.values()) < PEAK_BOUND_GB, figures
    for n in (1, 2):
        pkg = tmp_path / f"pkg{n}"
        manifest = load_manifest(pkg)  # every sha256 verifies
        assert manifest.recipe == "int4" and manifest.graphs["llm"].precision == "int4"
        model = onnx.load(str(pkg / "llm.onnx"), load_external_data=False)
        ops = [node.op_type for node in model.graph.node]
        assert "MatMul" not in ops and ops.count("MatMulNBits") == 4 * n + 1  # qkv, o, gate|up, down; lm_head
        assert ops.count("GatherBlockQuantized") == 2  # text and audio embedding tables
        data = sum(f.stat().st_size for f in pkg.glob("llm.onnx*"))
        fp32 = 4 * (2 * 152064 * 3584 + n * 233_000_000)
        assert data < 0.3 * fp32  # int4 blocks, 8-bit tables and attention
