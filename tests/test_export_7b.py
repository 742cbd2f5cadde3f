"""The published shapes at full width: the 7B LLM graph (> 2 GB) exports with external data and loads.

Slow (several minutes, ~15 GB of RAM): `make test-slow`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bcaudio.export.checkpoint import init_checkpoint
from bcaudio.export.export_llm import llm_example_inputs
from bcaudio.export.package import export_package
from bcaudio.presets import get_preset
from bcaudio.runtime.manifest import load_manifest


@pytest.mark.slow
def test_7b_llm_exports_with_external_data_and_loads(tmp_path: Path) -> None:
    cfg = get_preset("baichuan-audio-7b", layers=1)
    ckpt = init_checkpoint(cfg, tmp_path / "ckpt", seed=0, progress=print)
    manifest = export_package(ckpt, tmp_path / "pkg", graphs=["llm"])
    entry = manifest.graphs["llm"]
    assert sorted(entry.sha256) == ["llm.onnx", "llm.onnx.data"]
    assert (tmp_path / "pkg" / "llm.onnx.data").stat().st_size > 2 * 1024**3
    load_manifest(tmp_path / "pkg")  # every sha256 verifies
    session = ort.InferenceSession(str(tmp_path / "pkg" / "llm.onnx"), providers=["CPUExecutionProvider"])
    feeds = llm_example_inputs(cfg, batch=1, new=4, past=3, seed=0)
    logits, hidden, key, _ = session.run(None, feeds)
    assert logits.shape == (1, 152064) and hidden.shape == (1, 4, 3584) and key.shape == (1, 4, 7, 128)
    assert np.isfinite(logits).all()
