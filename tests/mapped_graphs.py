"""The layout every package writer must give MAPPED_GRAPHS: one aligned external-data file, listed in the manifest."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from bcaudio.onnx_files import ALIGNMENT, INLINE_BYTES, MAPPED_GRAPHS, subgraphs
from bcaudio.runtime.package.manifest import load_manifest


def assert_mapped_layout(package: Path) -> None:
    """Each mapped graph of ``package``: the graph and its ``.data`` file digested in the manifest, every initializer
    of INLINE_BYTES or more pointing into that file at an ALIGNMENT offset, and a session opens on it; the other
    (tiny, under the threshold) graphs stay one file."""
    manifest = load_manifest(package, verify=True)
    mapped = MAPPED_GRAPHS & set(manifest.graphs)
    assert mapped, f"{package} holds none of {sorted(MAPPED_GRAPHS)}"
    for name, entry in manifest.graphs.items():
        if name not in mapped:
            assert sorted(entry.sha256) == [entry.file], f"{name}: {sorted(entry.sha256)}"
            continue
        data = f"{entry.file}.data"
        assert sorted(entry.sha256) == [entry.file, data], f"{name}: {sorted(entry.sha256)}"
        stub = onnx.load(str(package / entry.file), load_external_data=False)
        large = [t for g in subgraphs(stub.graph) for t in g.initializer
                 if t.data_location == onnx.TensorProto.EXTERNAL or len(t.raw_data) >= INLINE_BYTES]
        assert large, f"{name}: no weights"
        for tensor in large:
            info = {e.key: e.value for e in tensor.external_data}
            assert tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.raw_data, f"{name}: {tensor.name}"
            assert info["location"] == data and int(info["offset"]) % ALIGNMENT == 0, f"{name}: {tensor.name} {info}"
        assert (package / data).stat().st_size >= sum(int({e.key: e.value for e in t.external_data}["length"])
                                                      for t in large)
        ort.InferenceSession(str(package / entry.file), providers=["CPUExecutionProvider"])
