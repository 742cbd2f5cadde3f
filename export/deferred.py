"""Graphs whose weights are produced only while the graph is written: one tensor in memory at a time.

A builder (the llm, the audio head) makes its nodes with :class:`Deferred` placeholders for the
weights, each with a function that reads it from the checkpoint. :func:`write_graph` then walks
the finished graph, and per weight: reads it, lets an optional :class:`Rewrite` replace the node
that consumes it (the int4/int8 recipes turn a MatMul into MatMulNBits there, so no fp32 copy of
the graph ever exists), writes the result to the external-data file and drops it. A graph that
``save_model`` would store inline (under the protobuf limit, not one of MAPPED_GRAPHS) is saved inline instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
from onnx import numpy_helper

from bcaudio.onnx_files import INLINE_BYTES, ConstantInfo, ExternalData, model_tensors, needs_external, save_model

PROGRESS_SECONDS = 10.0
TILE = 512  # rows x columns of contiguous's tiles: 256 and 2048 measured slower

Thunk = Callable[[], np.ndarray]


class Deferred:
    """Placeholders of a graph under construction: name -> the function that makes the tensor."""

    def __init__(self) -> None:
        self.thunks: dict[str, Thunk] = {}

    def tensor(self, name: str, value: np.ndarray | Thunk) -> onnx.TensorProto:
        """An initializer for ``value``; arrays under INLINE_BYTES stay inline, the rest wait for the writer."""
        if isinstance(value, np.ndarray) and value.nbytes < INLINE_BYTES:
            return numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.thunks[name] = value if callable(value) else (lambda: value)
        return onnx.TensorProto(name=name)

    def make(self, name: str) -> np.ndarray:
        return contiguous(self.thunks.pop(name)())


def contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` in C order. The builders hand their MatMul weights over as transposed views of the checkpoint's
    (out, in) tensors, and numpy's own copy of such a view walks the whole source column by column, missing the
    cache on every element at the 7B widths; copied in square tiles, each tile's source rows stay in cache
    (docs/real-scale.md, "Export time": the figures)."""
    if array.flags.c_contiguous or array.ndim != 2:
        return np.ascontiguousarray(array)
    out = np.empty(array.shape, array.dtype)
    rows, cols = array.shape
    for i in range(0, rows, TILE):
        for j in range(0, cols, TILE):
            out[i:i + TILE, j:j + TILE] = array[i:i + TILE, j:j + TILE]
    return out


class Rewrite(Protocol):
    """Replaces a node by others given the value of one of its constant inputs (a quantizer, tensor by tensor)."""

    def weight_input(self, node: onnx.NodeProto, main: bool) -> int | None:
        """Index of the input whose value :meth:`apply` needs, or None to keep the node."""

    def apply(self, node: onnx.NodeProto, weight: np.ndarray
              ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]] | None:
        """New nodes and initializers for ``node``, or None to keep it."""

    def finish(self, model: onnx.ModelProto, constant: ConstantInfo) -> None:
        """Rewrite the graph's structure once every node was seen (``constant`` tells a constant's shape and
        whether it is float32, placeholders included)."""


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        yield from attr.graphs


def _stacks(graph: onnx.GraphProto, stack: tuple[onnx.GraphProto, ...] = ()) -> Iterator[tuple[onnx.GraphProto, ...]]:
    """Every (sub)graph with the graphs enclosing it, outermost first."""
    stack = (*stack, graph)
    yield stack
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _stacks(sub, stack)


def _lookup(name: str, stack: tuple[onnx.GraphProto, ...]) -> tuple[onnx.GraphProto, onnx.TensorProto] | None:
    for graph in reversed(stack):
        for tensor in graph.initializer:
            if tensor.name == name:
                return graph, tensor
    return None


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for sub in _subgraphs(node):
            used |= _used_names(sub)
    return used


class _Writer:
    """External data plus the progress line: tensors done, GB written, time left."""

    def __init__(self, external: ExternalData, total: int, label: str, progress: Callable[[str], None]) -> None:
        self.external, self.total, self.label, self.progress = external, max(total, 1), label, progress
        self.done, self.start, self.last = 0, time.perf_counter(), time.perf_counter()

    def store(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        if array.nbytes < INLINE_BYTES:
            return numpy_helper.from_array(array, name)
        return self.external.write(name, array)

    def tick(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            left = (now - self.start) / self.done * (self.total - self.done)
            self.progress(f"    {self.label}: {self.done}/{self.total} tensors, "
                          f"{self.external.bytes_written / 1e9:.2f} GB written, ~{left:.0f} s left")


def _replace(graph: onnx.GraphProto, old: onnx.TensorProto, new: onnx.TensorProto) -> None:
    index = next(i for i, t in enumerate(graph.initializer) if t is old or t.name == old.name)
    graph.initializer[index].CopyFrom(new)


def _rewrite_nodes(model: onnx.ModelProto, deferred: Deferred, rewrite: Rewrite, writer: _Writer) -> set[str]:
    """Apply ``rewrite`` node by node; -> the placeholders it consumed (their nodes were replaced)."""
    consumed: set[str] = set()
    # branches before the graphs that hold them: rebuilding a graph's node list copies its If nodes
    for stack in reversed(list(_stacks(model.graph))):
        graph, main = stack[-1], len(stack) == 1
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            index = rewrite.weight_input(node, main)
            found = _lookup(node.input[index], stack) if index is not None and index < len(node.input) else None
            if found is None:
                nodes.append(node)
                continue
            owner, tensor = found
            pending = tensor.name in deferred.thunks
            array = deferred.make(tensor.name) if pending else numpy_helper.to_array(tensor)
            result = rewrite.apply(node, array)
            if result is None:
                nodes.append(node)
                if pending:  # kept as it is: write it now rather than read it twice
                    _replace(owner, tensor, writer.store(tensor.name, array))
            else:
                new_nodes, new_tensors = result
                nodes += new_nodes
                if pending:
                    consumed.add(tensor.name)
                owner.initializer.extend(writer.store(t.name, numpy_helper.to_array(t)) for t in new_tensors)
            if pending:
                writer.tick()
            del array
        graph.ClearField("node")
        graph.node.extend(nodes)
    return consumed


def _constant_info(model: onnx.ModelProto, deferred: Deferred) -> ConstantInfo:
    """Shape and float32-ness of any (sub)graph's initializer; a placeholder's from its value (read once more:
    only asked for small constants, such as a bias)."""
    tensors = {t.name: t for stack in _stacks(model.graph) for t in stack[-1].initializer}

    def info(name: str) -> tuple[tuple[int, ...], bool] | None:
        tensor = tensors.get(name)
        if tensor is None:
            return None
        if name in deferred.thunks:
            value = deferred.thunks[name]()
            return tuple(value.shape), value.dtype == np.float32
        return tuple(tensor.dims), tensor.data_type == onnx.TensorProto.FLOAT

    return info


def _write_pending(model: onnx.ModelProto, deferred: Deferred, writer: _Writer, consumed: set[str]) -> None:
    for stack in _stacks(model.graph):
        graph = stack[-1]
        used = _used_names(graph)
        keep = []
        for tensor in graph.initializer:
            if tensor.name in consumed:
                assert tensor.name not in used, f"{tensor.name} was quantized for one node but others read it"
            elif tensor.name not in deferred.thunks:
                keep.append(tensor)
            elif tensor.name in used:
                keep.append(writer.store(tensor.name, deferred.make(tensor.name)))
                writer.tick()
        graph.ClearField("initializer")
        graph.initializer.extend(keep)
    deferred.thunks.clear()  # placeholders no node reads any more


def _inline(model: onnx.ModelProto, data: Path) -> None:
    """Move every external tensor's bytes from ``data`` back into the protobuf."""
    with data.open("rb") as f:
        for tensor in model_tensors(model):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in tensor.external_data}
            f.seek(int(info["offset"]))
            tensor.raw_data = f.read(int(info["length"]))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]


def write_graph(model: onnx.ModelProto, deferred: Deferred, path: Path, rewrite: Rewrite | None = None,
                progress: Callable[[str], None] = print, graph: str = "") -> list[Path]:
    """Materialize every placeholder of ``model`` (through ``rewrite`` where it applies) and save it at ``path``;
    -> the files written: the graph, and ``<name>.data`` when package graph ``graph`` (also the progress lines'
    label) needs external data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    temp = path.with_name(path.name + ".data.partial")
    graph = graph or path.stem
    with ExternalData(temp, location=data.name) as external:
        writer = _Writer(external, len(deferred.thunks), graph, progress)
        consumed = set() if rewrite is None else _rewrite_nodes(model, deferred, rewrite, writer)
        if rewrite is not None:
            rewrite.finish(model, _constant_info(model, deferred))
        _write_pending(model, deferred, writer, consumed)
        external_bytes = external.bytes_written
    if not needs_external(graph, external_bytes):  # as save_model would store it: everything inline
        _inline(model, temp)
        temp.unlink()
        return save_model(model, path, graph)
    graph_temp = path.with_name(path.name + ".partial")
    onnx.save_model(model, str(graph_temp))
    temp.replace(data)
    graph_temp.replace(path)
    return [path, data]
