"""Block quantization applied tensor by tensor while a graph is written (``bcaudio export --recipe``).

:func:`bcaudio.quant.blocks.quantize_blocks` needs the whole fp32 graph in memory (30 GB for the 7B
llm). Here the same decisions are made on the graph's structure before any weight exists (which
MatMuls are attention projections, which Gathers are embedding tables, which nodes stay fp32), and
each weight is quantized by the same block quantizers the moment it is read from the checkpoint:
ONNX Runtime's ``DefaultWeightOnlyQuantizer`` block kernel for MatMuls (the one
``MatMulNBitsQuantizer`` calls), :func:`bcaudio.quant.blocks.quantize_table_node` for tables.
tests/test_export_recipe.py checks that the result equals export-then-quantize.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer

from bcaudio.onnx_files import ConstantInfo, input_uses
from bcaudio.quant.bias_fold import fold_bias_adds
from bcaudio.quant.blocks import (
    ACCURACY_LEVEL,
    TABLE_BLOCK_SIZE,
    attention_projections,
    is_table_gather,
    quantize_table_node,
    table_fits,
)
from bcaudio.quant.fragile import fp32_nodes

Replacement = tuple[list[onnx.NodeProto], list[onnx.TensorProto]]


def matmul_nbits_node(node: onnx.NodeProto, weight: np.ndarray, bits: int, block_size: int) -> Replacement:
    """MatMulNBits for MatMul ``node`` with its (K, N) weight, named and parameterized as ONNX Runtime's
    quantizer names them (asymmetric, ``accuracy_level`` 4)."""
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, accuracy_level=ACCURACY_LEVEL,
                                          op_types_to_quantize=("MatMul",), bits=bits)
    packed, scales, zero_points = DefaultWeightOnlyQuantizer(config).qbits_block_quant(weight)
    name = node.input[1]
    tensors = [numpy_helper.from_array(packed, f"{name}_Q{bits}"), numpy_helper.from_array(scales, f"{name}_scales"),
               numpy_helper.from_array(zero_points, f"{name}_zero_points")]
    rows, cols = weight.shape
    matmul = helper.make_node("MatMulNBits", [node.input[0], *(t.name for t in tensors)], list(node.output),
                              name=f"{node.name}_Q{bits}" if node.name else "", domain="com.microsoft",
                              K=rows, N=cols, bits=bits, block_size=block_size, accuracy_level=ACCURACY_LEVEL)
    return [matmul], tensors


class BlockRewrite:
    """The rules of ``quantize_blocks(graph, bits)`` for one graph, as a :class:`bcaudio.export.deferred.Rewrite`:
    tables in 8 bits; with ``bits`` = 4, attention projections in 8 bits and the other MatMuls in 4."""

    def __init__(self, model: onnx.ModelProto, graph: str, bits: int, block_size: int) -> None:
        if bits not in (4, 8):
            raise ValueError(f"block quantization is 4 or 8 bits, got {bits}")
        self.bits, self.block_size = bits, block_size
        self.exclude = set(fp32_nodes(graph, model))
        self.eight = attention_projections(model) - self.exclude if bits == 4 else set()
        self.uses = input_uses(model)
        self.tables: list[str] = []
        self.matmuls = 0

    def weight_input(self, node: onnx.NodeProto, main: bool) -> int | None:
        if main and is_table_gather(node, self.uses, self.exclude):
            return 0
        if node.op_type == "MatMul" and node.name not in self.exclude and len(node.input) == 2:
            return 1
        return None

    def apply(self, node: onnx.NodeProto, weight: np.ndarray) -> Replacement | None:
        if node.op_type == "Gather":
            table_block = min(self.block_size, TABLE_BLOCK_SIZE)  # as quantize_blocks
            if not table_fits(weight, table_block):
                return None
            self.tables.append(node.input[0])
            gather, tensors = quantize_table_node(node, weight, table_block)
            return [gather], tensors
        if weight.ndim != 2 or weight.dtype != np.float32:
            return None
        self.matmuls += 1
        return matmul_nbits_node(node, weight, 8 if node.name in self.eight else self.bits, self.block_size)

    def finish(self, model: onnx.ModelProto, constant: ConstantInfo) -> None:
        """Bias Adds into their MatMulNBits, as ``quantize_blocks`` folds them."""
        fold_bias_adds(model, constant)
