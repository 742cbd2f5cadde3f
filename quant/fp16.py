"""fp16 graphs for CUDA: ``onnxruntime.transformers.float16`` with float32 graph I/O and fp32 islands.

fp16 on CPU is slower than fp32 (docs/quantization-choices.md), so only the CUDA
recipe uses it. ``keep_io_types`` keeps the graph inputs and outputs float32, so the runtime
feeds the same arrays whatever the precision; the converter inserts the Casts.

The exception is the llm's KV cache (``past_*`` / ``present_*``): it becomes float16. The fast
graph's GroupQueryAttention reads and writes one buffer bound as both past and present; fp32
cache I/O would put a Cast on each side of it, so every step would copy the whole cache twice
and the buffer would no longer be shared in place (and the cache would take twice the memory).
``LlmState`` allocates the cache in the session's input dtype, so nothing else changes.

:func:`plan_fp16` makes the same conversion while a graph is written (``bcaudio export --recipe fp16``):
the converter runs on the weight-free graph (placeholders typed and shaped, no data), which tells
which weights become fp16; each is then converted alone as it is read (:func:`to_fp16`), so no
fp32 copy of the graph exists (the 7B llm is 30 GB in fp32). tests/test_export_recipe.py checks that
the result equals export-then-quantize.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnxruntime.transformers import float16
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from bcaudio.onnx_files import is_large, model_tensors, save_model, subgraphs
from bcaudio.quant.fragile import fp32_nodes

# Op types kept fp32 in every graph, on top of the converter's defaults (which keep CumSum, Range, Min, Max ...):
# Softmax and the norms sum many terms (fp16 overflows past 65504), Pow/Sqrt/Log/Exp/Erf amplify relative error.
FP32_OP_TYPES = ("Softmax", "LayerNormalization", "InstanceNormalization", "ReduceMean", "ReduceSum", "Pow",
                 "Sqrt", "Log", "Exp", "Erf")
# Graph I/O that becomes float16 instead of staying float32, per graph: the llm's KV cache.
FP16_IO_PREFIXES = {"llm": ("past_", "present_")}
FP16_SMALLEST, FP16_LARGEST = np.float32(5.96e-08), np.float32(65504.0)  # convert_np_to_float16's defaults
CHUNK = 1 << 22  # elements per conversion step of to_fp16: its temporaries are a few times the chunk, not the tensor


def fp32_io(graph: str, model: onnx.ModelProto) -> list[str]:
    """Names of the graph inputs and outputs of ``graph`` that keep their float32 type."""
    fp16 = FP16_IO_PREFIXES.get(graph, ())
    return [v.name for v in [*model.graph.input, *model.graph.output] if not v.name.startswith(fp16)]


def _convert(model: onnx.ModelProto, graph: str, disable_shape_infer: bool) -> onnx.ModelProto:
    return unround_io(convert_float_to_float16(
        model, keep_io_types=fp32_io(graph, model), op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OP_TYPES],
        node_block_list=fp32_nodes(graph, model), disable_shape_infer=disable_shape_infer))


def quantize_fp16(src: Path, dst: Path, graph: str) -> list[Path]:
    """``src`` -> ``dst`` in fp16 with fp32 graph I/O (the llm's KV cache fp16); -> the files written."""
    model = onnx.load(str(src))
    return save_model(_convert(model, graph, disable_shape_infer=is_large(model)), dst, graph)


def to_fp16(array: np.ndarray) -> np.ndarray:
    """``array`` as the converter stores an fp16 initializer (``convert_np_to_float16``), bit for bit: a finite
    value past fp16's largest becomes it, a non-zero one nearer 0 than its smallest becomes that (sign kept), NaN,
    infinities and zeros stay. Written again rather than called: the converter's function extracts every positive
    and negative element four times over to log its extremes and clamps with four passes of ``np.where``, most
    of an fp16 export's time; here a plain cast, and only the elements it sent to 0 or infinity are looked at
    again (a 7B layer's weights have none). A chunk at a time, so the temporaries stay small."""
    flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
    out = np.empty(flat.size, np.float16)
    for start in range(0, flat.size, CHUNK):
        chunk, half = flat[start:start + CHUNK], out[start:start + CHUNK]
        with np.errstate(over="ignore"):  # past fp16's range the cast gives inf: fixed below
            half[:] = chunk
        magnitude = half.view(np.uint16) & 0x7FFF  # numpy's float16 comparisons are slow: its bits are not
        odd = np.flatnonzero((magnitude == 0) | (magnitude == 0x7C00))  # zero or infinity
        if odd.size:
            x = chunk[odd]
            size = np.abs(x)
            fixed = np.where(size < 1, FP16_SMALLEST, FP16_LARGEST)
            keep = (x == 0) | ~np.isfinite(x)  # zeros, infinities (NaN casts to NaN, never to 0 or inf)
            half[odd] = np.where(keep, half[odd], np.copysign(fixed, x).astype(np.float16))
    return out.reshape(array.shape)


def _value_info_from_dims(tensor: TensorProto) -> onnx.ValueInfoProto:
    """The converter's ``make_value_info_from_tensor`` from the dims alone (it reads the data for the shape)."""
    return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))


def plan_fp16(model: onnx.ModelProto, graph: str, shapes: Mapping[str, tuple[tuple[int, ...], np.dtype]]
              ) -> tuple[onnx.ModelProto, set[str]]:
    """``model`` (weights still placeholders, ``shapes``: name -> (shape, dtype) of each) converted as
    :func:`quantize_fp16` converts the whole graph; -> the converted graph and the placeholders that become fp16.

    Shape inference always runs: the weight-free graph is small, where ``quantize_fp16`` has to skip it for
    graphs of 2 GB or more."""
    for tensor in model_tensors(model):
        if tensor.name in shapes:
            shape, dtype = shapes[tensor.name]
            tensor.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
            tensor.dims[:] = shape
    with mock.patch.object(float16, "make_value_info_from_tensor", _value_info_from_dims):
        converted = _convert(model, graph, disable_shape_infer=False)
    fp16 = {t.name for t in model_tensors(converted) if t.name in shapes and t.data_type == TensorProto.FLOAT16}
    return converted, fp16


def unround_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give the fp32 nodes the float32 graph inputs themselves, and the float32 outputs their fp32 values,
    in place; -> ``model``.

    The converter casts each float32 input to fp16 once and hands fp32 nodes a cast back, and casts every
    output through fp16, so an fp32 island still reads and writes 11-bit values: the vocoder's F0 predictor
    read the mel rounded (f0 off by ~1e-3 Hz, integrated into the phase: 12 dB SNR against fp32 at a wide
    f0 range on tiny), its source the start phase rounded, and the frame phase handed to the next streamed
    window came out rounded by up to 2.4e-4 cycles. Each such round trip is cut out.
    """
    graph = model.graph
    inputs = {v.name for v in graph.input if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    cast16 = {n.output[0]: n.input[0] for n in graph.node
               if n.op_type == "Cast" and _cast_to(n) == onnx.TensorProto.FLOAT16}
    to_fp32 = [n for n in graph.node if n.op_type == "Cast" and _cast_to(n) == onnx.TensorProto.FLOAT
               and n.input[0] in cast16]
    outputs = {v.name for v in graph.output}
    back = {n.output[0]: cast16[n.input[0]] for n in to_fp32
            if cast16[n.input[0]] in inputs and n.output[0] not in outputs}
    for node in to_fp32:
        if node.output[0] in outputs:
            node.input[0] = cast16[node.input[0]]  # a float32 Cast of the float32 value: the output unrounded
    keep = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] in back)]
    del graph.node[:]
    graph.node.extend(keep)
    for sub in subgraphs(graph):  # If branches read outer names too
        for node in sub.node:
            for i, name in enumerate(node.input):
                node.input[i] = back.get(name, name)
    read = {name for sub in subgraphs(graph) for n in sub.node for name in n.input} | outputs
    keep = [n for n in graph.node if not (n.output[0] in cast16 and n.output[0] not in read)]
    del graph.node[:]
    graph.node.extend(keep)
    return model


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")
