"""Writing ONNX graphs: one ``.onnx`` file, plus one external-data file past the protobuf limit or for a graph
that ONNX Runtime should map rather than copy.

Shared by export and quant (torch-free), so the manifest lists an exported and a quantized
graph's files the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

# Protobuf cannot serialize a message over 2 GiB; stay well under it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Graphs whose weights go to an external-data file at every size: ONNX Runtime maps such a file, while it copies
# the initializers of a graph stored inline (the 7B int4 audio head kept 2.91 GB resident for a 0.94 GB file,
# the llm and audio tokenizer with external data about 0.03 GB: docs/real-scale.md).
MAPPED_GRAPHS = frozenset({"audio_head", "flow_prenet"})
# Smaller tensors stay in the protobuf (shape inference reads them), as onnx's own writer leaves them.
INLINE_BYTES = 1024
# Offsets aligned like onnx's own writer does for large tensors, so a runtime may map them directly.
ALIGNMENT = 4096

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


def needs_external(graph: str, weight_bytes: int) -> bool:
    """Whether package graph ``graph`` (any name for a file outside a package) with ``weight_bytes`` of weights is
    written with external data."""
    return graph in MAPPED_GRAPHS or weight_bytes >= EXTERNAL_DATA_THRESHOLD


class ExternalData:
    """One ``.data`` file next to the graph; ``write`` returns the TensorProto that points into it."""

    def __init__(self, path: Path, location: str | None = None) -> None:
        """``location``: the file name the tensors point at, when ``path`` is a temporary name renamed later."""
        self.path = path
        self.location = location or path.name
        self._file = open(path, "wb")  # closed by __exit__

    def _append(self, tensor: TensorProto, data: bytes) -> None:
        offset = -self._file.tell() % ALIGNMENT + self._file.tell()
        self._file.seek(offset)
        self._file.write(data)
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(len(data)))):
            tensor.external_data.add(key=key, value=value)

    def write(self, name: str, array: np.ndarray) -> TensorProto:
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        self._append(tensor, array.tobytes())
        return tensor

    def move(self, tensor: TensorProto) -> None:
        """Move ``tensor``'s raw bytes into the file, in place (its memory is freed as it goes)."""
        data = tensor.raw_data
        tensor.ClearField("raw_data")
        self._append(tensor, data)

    @property
    def bytes_written(self) -> int:
        return self._file.tell()

    def __enter__(self) -> ExternalData:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._file.close()
        if kind is not None:
            self.path.unlink(missing_ok=True)


def save_model(model: onnx.ModelProto, path: Path, graph: str = "") -> list[Path]:
    """Save ``model`` at ``path``; -> the files written (the graph, and its ``.data`` file when
    :func:`needs_external` says so for package graph ``graph``).

    With external data every initializer of INLINE_BYTES or more goes to the ``.data`` file, at ALIGNMENT,
    those of subgraphs included (the If/Loop branches; tests/test_onnx_files.py); ``model`` is left pointing
    at it. Both files are written under temporary names and renamed when complete.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    graph_temp = path.with_name(path.name + ".partial")
    if not needs_external(graph, model_bytes(model)):
        onnx.save_model(model, str(graph_temp))
        graph_temp.replace(path)
        return [path]
    data_temp = path.with_name(data.name + ".partial")
    with ExternalData(data_temp, location=data.name) as external:
        for sub in subgraphs(model.graph):
            for tensor in sub.initializer:
                if len(tensor.raw_data) >= INLINE_BYTES:
                    external.move(tensor)
    onnx.save_model(model, str(graph_temp))
    data_temp.replace(data)
    graph_temp.replace(path)
    return [path, data]
