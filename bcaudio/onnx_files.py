"""Writing ONNX graphs: one ``.onnx`` file, plus one external-data file past the protobuf limit.

Shared by export and quant (torch-free), so the manifest lists an exported and a quantized
graph's files the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
from onnx import AttributeProto, TensorProto

# Protobuf cannot serialize a message over 2 GiB; stay well under it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

_BITS = {getattr(TensorProto, n): bits for n, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2),
                                                       ("UINT2", 2)) if hasattr(TensorProto, n)}


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph inside it (If / Loop / Scan bodies), depth first: the If branches hold weights
    and nodes too (the audio head's per-position weights live in If branches)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from subgraphs(attr.g)
            for sub in attr.graphs:
                yield from subgraphs(sub)


# name -> (shape, is float32) of a constant a graph can read, or None when the name is not a constant
ConstantInfo = Callable[[str], "tuple[tuple[int, ...], bool] | None"]


def input_uses(model: onnx.ModelProto) -> dict[str, int]:
    """How many node inputs read each name, over every (sub)graph."""
    uses: dict[str, int] = {}
    for sub in subgraphs(model.graph):
        for n in sub.node:
            for i in n.input:
                uses[i] = uses.get(i, 0) + 1
    return uses


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Initializers and attribute tensors (Constant values) of ``graph`` and of its subgraphs."""
    for g in subgraphs(graph):
        yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def model_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every tensor that saving with external data can move out of the protobuf (what onnx externalizes)."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def tensor_bytes(t: TensorProto) -> int:
    """Bytes of a tensor's data, wherever it is stored (raw_data, the typed fields, or an external file)."""
    if t.raw_data:
        return len(t.raw_data)
    if t.data_location == TensorProto.EXTERNAL:
        length = {e.key: e.value for e in t.external_data}.get("length")
        if length is not None:
            return int(length)
    if t.data_type == TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    count = math.prod(t.dims)
    if t.data_type in _BITS:
        return (count * _BITS[t.data_type] + 7) // 8
    return count * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def model_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the weights, subgraphs included: the part that decides whether the graph needs external data."""
    return sum(tensor_bytes(t) for t in model_tensors(model))


def is_large(model: onnx.ModelProto) -> bool:
    return model_bytes(model) >= EXTERNAL_DATA_THRESHOLD


def save_model(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save ``model`` at ``path``; -> the files written (the graph, and its ``.data`` file when large).

    With external data every tensor of 1 KB or more goes to the ``.data`` file, those of subgraphs
    included (onnx's external-data writer walks the If/Loop branches; tests/test_onnx_files.py).
    """
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
