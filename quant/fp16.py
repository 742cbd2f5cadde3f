"""fp16 graphs for CUDA: ``onnxruntime.transformers.float16`` with float32 graph I/O and fp32 islands.

fp16 on CPU is slower than fp32 (toolchain notes: 134 vs 98 ms/token), so only the CUDA
recipe uses it. ``keep_io_types`` keeps every graph input and output float32, so the
runtime feeds the same arrays whatever the precision; the converter inserts the Casts.
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


def quantize_fp16(src: Path, dst: Path, graph: str) -> list[Path]:
    """``src`` -> ``dst`` in fp16 with fp32 graph I/O; -> the files written."""
    model = onnx.load(str(src))
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OP_TYPES],
        node_block_list=fp32_nodes(graph, model), disable_shape_infer=is_large(model))
    return save_model(converted, dst)
