"""Writing ONNX graphs: one ``.onnx`` file, plus one external-data file past the protobuf limit.

Shared by export and quant (torch-free), so the manifest lists an exported and a quantized
graph's files the same way.
"""

from __future__ import annotations

from pathlib import Path

import onnx

# Protobuf cannot serialize a message over 2 GiB; stay well under it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def model_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers, the part that decides whether the graph needs external data."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def is_large(model: onnx.ModelProto) -> bool:
    return model_bytes(model) >= EXTERNAL_DATA_THRESHOLD


def save_model(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save ``model`` at ``path``; -> the files written (the graph, and its ``.data`` file when large)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    if not is_large(model):
        onnx.save_model(model, str(path))
        return [path]
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [path, data]
