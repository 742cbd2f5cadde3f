"""Weight-only 4-bit blocks: MatMulNBits for MatMuls, GatherBlockQuantized for embedding-like tables.

``accuracy_level=4`` lets the CPU kernel quantize activations to int8 and use integer dot
products: 2.3x faster than the default level on this CPU (toolchain notes: 25 vs 57 ms/token).
Gather tables (token and audio embeddings, the audio head's per-position FFN weights) need the
int4 tensor type, which is opset 21: the quantizer would only *relabel* an older graph as opset
21 (invalid: ReduceMean's axes moved to an input at 18), so the graph is first converted with
``onnx.version_converter``; a graph that does not convert keeps fp32 tables and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import version_converter
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from bcaudio.onnx_files import save_model
from bcaudio.quant.fragile import fp32_nodes
from bcaudio.quant.io import quiet_quantizer

INT4_OPSET = 21
ACCURACY_LEVEL = 4


def _gathers(model: onnx.ModelProto, block_size: int) -> tuple[list[str], list[str]]:
    """-> (Gathers of float tables whose last axis holds whole blocks, every other Gather)."""
    inits = {t.name: t for t in model.graph.initializer}

    def table(n: onnx.NodeProto) -> bool:
        t = inits.get(n.input[0])
        return (t is not None and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
                and len(t.dims) >= 2 and t.dims[-1] % block_size == 0)

    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    return [n.name for n in gathers if table(n)], [n.name for n in gathers if not table(n)]


def quantize_int4(src: Path, dst: Path, graph: str, block_size: int = 32,
                  progress: Callable[[str], None] = print) -> list[Path]:
    """``src`` -> ``dst`` with 4-bit blocks of ``block_size`` along each weight's input axis.

    Asymmetric (with zero points): on tiny, logits rel L2 0.36 vs 0.39 symmetric at block 32, top-1 0.58 vs 0.50.
    """
    model = onnx.load(str(src))
    op_types: tuple[str, ...] = ("MatMul",)
    tables, others = _gathers(model, block_size)
    if tables:
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        try:
            if opset < INT4_OPSET:
                model = version_converter.convert_version(model, INT4_OPSET)
            op_types = ("MatMul", "Gather")
        except Exception as exc:  # the converter raises bare RuntimeErrors/ValueErrors per unsupported op
            progress(f"    {graph}: embedding tables stay fp32 (opset {opset} -> {INT4_OPSET} failed: "
                     f"{str(exc).splitlines()[0][:120]})")
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=False,
                                     accuracy_level=ACCURACY_LEVEL, nodes_to_exclude=fp32_nodes(graph, model) + others,
                                     op_types_to_quantize=op_types, quant_axes=(("MatMul", 0), ("Gather", -1)))
    with quiet_quantizer():
        quantizer.process()
    return save_model(quantizer.model.model, dst)
