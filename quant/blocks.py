"""Weight-only block quantization: ONNX Runtime's MatMulNBits (MatMul weights) and GatherBlockQuantized (tables).

Used for the graphs whose weights dominate decoding (llm, audio head), at two precisions:

- ``int8``: every MatMul and every float table in 8-bit blocks: on ``small``'s llm about half the
  logits error of dynamic int8 with uint8 per-channel weights (its per-tensor activation scale is the
  loss), at the same decode speed (docs/quantization-choices.md); the CPU kernel quantizes
  activations per block of ``block_size`` to signed int8, so the u8s8 saturation trap does not
  apply (``tests/test_quant.py`` checks it on the trap's model).
- ``int4``: 4-bit blocks for every MatMul except the attention projections, which stay 8-bit, and
  8-bit tables (the variants measured on ``small``'s llm: docs/quantization-choices.md). A
  random deep stack amplifies the attention and input-embedding errors most; the feed-forward
  weights, most of the bytes, take 4 bits with the least damage.

Tables need no opset change: 8-bit GatherBlockQuantized stores plain uint8, and ORT's own
quantizer only writes 4-bit tables. ``accuracy_level=4`` lets the CPU kernel use integer dot
products, several times faster than the default level on the CPU (docs/quantization-choices.md).
Everything is found by graph structure (op types, initializers), never by node names, so the
torch export and the graphs built from the weights are treated alike, subgraphs (``If``) included.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import (
    HQQWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
)

from bcaudio.onnx_files import input_uses, save_model, subgraphs
from bcaudio.quant.bias_fold import fold_bias_adds, initializer_info
from bcaudio.quant.fragile import fp32_nodes
from bcaudio.quant.io import quiet_quantizer
from bcaudio.quant.recipes import ROUNDING

ACCURACY_LEVEL = 4
TABLE_BITS = 8
# a step reads one row of a table, so its block size costs no speed: tables keep small blocks (and rows as short
# as tiny's 64 still divide) whatever the MatMuls' block
TABLE_BLOCK_SIZE = 32
ATTENTION_OPS = frozenset({"GroupQueryAttention", "MultiHeadAttention", "Attention", "PackedAttention"})
# ops between a projection and its attention op that keep it "the projection" (bias, q|k|v split, head reshapes)
_PASS_THROUGH = frozenset({"Add", "Split", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze"})


def attention_projections(model: onnx.ModelProto) -> set[str]:
    """Names of the MatMuls that feed an attention op (q, k, v) or read its output (o), in any (sub)graph."""
    found: set[str] = set()
    for graph in subgraphs(model.graph):
        producer = {o: n for n in graph.node for o in n.output}
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        for node in (n for n in graph.node if n.op_type in ATTENTION_OPS):
            todo = list(node.input)
            while todo:
                up = producer.get(todo.pop())
                if up is not None and up.op_type == "MatMul":
                    found.add(up.name)
                elif up is not None and up.op_type in _PASS_THROUGH:
                    todo.append(up.input[0])
            todo = list(node.output[:1])
            while todo:
                for down in consumers.get(todo.pop(), []):
                    if down.op_type == "MatMul":
                        found.add(down.name)
                    elif down.op_type in _PASS_THROUGH:
                        todo += list(down.output)
    return found


def _quantize_table(table: np.ndarray, block_size: int, rows: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric uint8 blocks along the last axis -> (codes, scales, zero points), the layout of
    GatherBlockQuantized with bits=8 (scales and zero points: one per block). Computed ``rows`` rows at a
    time (every block lies within a row, so the result is the same): a 7B embedding table is 2.2 GB in fp32,
    and whole-table temporaries would need several times that."""
    flat = table.reshape(-1, table.shape[-1])
    codes = np.empty(flat.shape, np.uint8)
    scale = np.empty((flat.shape[0], flat.shape[1] // block_size), np.float32)
    zero = np.empty(scale.shape, np.uint8)
    for r in range(0, flat.shape[0], rows):
        blocks = flat[r:r + rows].reshape(-1, flat.shape[1] // block_size, block_size)
        lo, hi = np.minimum(blocks.min(-1), 0.0), np.maximum(blocks.max(-1), 0.0)
        s = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
        z = np.clip(np.round(-lo / s), 0, 255)
        codes[r:r + rows] = np.clip(np.round(blocks / s[..., None]) + z[..., None], 0, 255).reshape(len(blocks), -1)
        scale[r:r + rows], zero[r:r + rows] = s, z
    lead = table.shape[:-1]
    return codes.reshape(table.shape), scale.reshape(*lead, -1), zero.reshape(*lead, -1)


def is_table_gather(node: onnx.NodeProto, uses: dict[str, int], exclude: set[str]) -> bool:
    """An axis-0 Gather whose table (input 0) nothing else reads: the embedding lookups. The table itself
    must also pass :func:`table_fits`."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return node.op_type == "Gather" and node.name not in exclude and axis == 0 and uses.get(node.input[0]) == 1


def table_fits(table: np.ndarray, block_size: int) -> bool:
    return table.ndim >= 2 and table.dtype == np.float32 and table.shape[-1] % block_size == 0


def quantize_table_node(node: onnx.NodeProto, table: np.ndarray, block_size: int
                        ) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """The GatherBlockQuantized node and its three initializers that replace the Gather ``node`` of ``table``."""
    codes, scales, zeros = _quantize_table(table, block_size)
    name = node.input[0]
    names = [f"{name}_q8", f"{name}_scales", f"{name}_zero_points"]
    tensors = [numpy_helper.from_array(a, n) for a, n in zip((codes, scales, zeros), names, strict=True)]
    gather = helper.make_node(
        "GatherBlockQuantized", [names[0], node.input[1], names[1], names[2]], list(node.output),
        name=node.name, domain="com.microsoft", bits=TABLE_BITS, block_size=block_size, gather_axis=0,
        quantize_axis=table.ndim - 1)
    return gather, tensors


def quantize_tables(model: onnx.ModelProto, block_size: int, exclude: set[str]) -> list[str]:
    """Replace each axis-0 Gather of a float initializer table (embeddings; its only use) with an 8-bit
    GatherBlockQuantized, in place; -> the tables quantized."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = input_uses(model)
    done = []
    for index, node in enumerate(graph.node):
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or not is_table_gather(node, uses, exclude) or table.data_type != onnx.TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(table)
        if not table_fits(array, block_size):
            continue
        gather, tensors = quantize_table_node(node, array, block_size)
        graph.initializer.remove(table)
        graph.initializer.extend(tensors)
        graph.node[index].CopyFrom(gather)
        done.append(table.name)
    if done and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done


def _algo(rounding: str, bits: int, block_size: int) -> object | None:
    """onnxruntime's rounding of the 4-bit blocks: ``rtn`` (round to nearest over the block's min/max range) or
    ``hqq`` (half-quadratic: fits scale and zero point per block; float zero points; minutes on small's llm,
    docs/benchmarks.md).
    Its k-quant is left out: in onnxruntime 1.32 it packs zero points wrongly for a weight with an odd number of
    blocks (small's K=896 at block 128) and quantizes only the main graph."""
    if rounding == "hqq":
        return HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits, op_types_to_quantize=("MatMul",))
    return None


def _set_accuracy_level(model: onnx.ModelProto) -> None:
    """HQQ's nodes come without ``accuracy_level``; without it the CPU kernel computes in fp32, several times slower
    (docs/benchmarks.md, accuracy levels)."""
    for graph in subgraphs(model.graph):
        for node in graph.node:
            if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
                node.attribute.append(helper.make_attribute("accuracy_level", ACCURACY_LEVEL))


def _matmul_pass(model: onnx.ModelProto, bits: int, block_size: int, only: set[str] | None,
                 exclude: set[str], rounding: str = "rtn") -> onnx.ModelProto:
    """MatMulNBits for the MatMuls with constant weights (``only`` those, when given), in every subgraph."""
    names = {n.name for g in subgraphs(model.graph) for n in g.node}
    skip = exclude | (names - only if only is not None else set())
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=False,
                                     accuracy_level=ACCURACY_LEVEL, nodes_to_exclude=sorted(skip),
                                     op_types_to_quantize=("MatMul",), algo_config=_algo(rounding, bits, block_size))
    with quiet_quantizer():
        quantizer.process()
    out = quantizer.model.model
    _set_accuracy_level(out)
    return out


def quantize_blocks(src: Path, dst: Path, graph: str, bits: int, block_size: int = 32,
                    progress: Callable[[str], None] = print, rounding: str = "rtn",
                    attention_bits: int = 8) -> list[Path]:
    """``src`` -> ``dst``: ``bits`` = 8 (everything 8-bit) or 4 (4-bit MatMuls, 8-bit attention projections
    and tables), blocks of ``block_size`` along each weight's input axis; asymmetric (with zero points, which
    measured more accurate than symmetric blocks: docs/quantization-choices.md)."""
    if bits not in (4, 8) or attention_bits not in (4, 8) or rounding not in ROUNDING:
        raise ValueError(f"block quantization is 4 or 8 bits with rounding {ROUNDING}, got {bits}, {attention_bits}, "
                         f"{rounding}")
    model = onnx.load(str(src))
    exclude = set(fp32_nodes(graph, model))
    tables = quantize_tables(model, min(block_size, TABLE_BLOCK_SIZE), exclude)
    eight = attention_projections(model) - exclude if bits == 4 and attention_bits == 8 else None
    if eight:
        model = _matmul_pass(model, 8, block_size, eight, exclude)
    model = _matmul_pass(model, bits, block_size, None, exclude, rounding if bits == 4 else "rtn")
    fold_bias_adds(model, initializer_info(model))
    progress(f"    {graph}: {len(tables)} table(s) and {len(eight or ())} attention projection(s) in 8 bits"
             if bits == 4 else f"    {graph}: {len(tables)} table(s) in 8 bits")
    return save_model(model, dst, graph)
