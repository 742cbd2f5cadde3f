"""fp16 graphs for CUDA: ``onnxruntime.transformers.float16`` with float32 graph I/O and fp32 islands.

fp16 on CPU is slower than fp32 (docs/quantization-choices.md), so only the CUDA
recipe uses it. ``keep_io_types`` keeps the graph inputs and outputs float32, so the runtime
feeds the same arrays whatever the precision; the converter inserts the Casts.

The exception is the llm's KV cache (``past_*`` / ``present_*``): it becomes float16. The fast
graph's GroupQueryAttention reads and writes one buffer bound as both past and present; fp32
cache I/O would put a Cast on each side of it, so every step would copy the whole cache twice
and the buffer would no longer be shared in place (and the cache would take twice the memory).
``LlmState`` allocates the cache in the session's input dtype, so nothing else changes.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from bcaudio.onnx_files import is_large, save_model
from bcaudio.quant.fragile import fp32_nodes

# Op types kept fp32 in every graph, on top of the converter's defaults (which keep CumSum, Range, Min, Max ...):
# Softmax and the norms sum many terms (fp16 overflows past 65504), Pow/Sqrt/Log/Exp/Erf amplify relative error.
FP32_OP_TYPES = ("Softmax", "LayerNormalization", "InstanceNormalization", "ReduceMean", "ReduceSum", "Pow",
                 "Sqrt", "Log", "Exp", "Erf")
# Graph I/O that becomes float16 instead of staying float32, per graph: the llm's KV cache.
FP16_IO_PREFIXES = {"llm": ("past_", "present_")}


def fp32_io(graph: str, model: onnx.ModelProto) -> list[str]:
    """Names of the graph inputs and outputs of ``graph`` that keep their float32 type."""
    fp16 = FP16_IO_PREFIXES.get(graph, ())
    return [v.name for v in [*model.graph.input, *model.graph.output] if not v.name.startswith(fp16)]


def quantize_fp16(src: Path, dst: Path, graph: str) -> list[Path]:
    """``src`` -> ``dst`` in fp16 with fp32 graph I/O (the llm's KV cache fp16); -> the files written."""
    model = onnx.load(str(src))
    converted = convert_float_to_float16(
        model, keep_io_types=fp32_io(graph, model), op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OP_TYPES],
        node_block_list=fp32_nodes(graph, model), disable_shape_infer=is_large(model))
    return save_model(converted, dst)
