"""Dynamic int8: weights quantized per output channel, activations quantized per call.

Weight type: **uint8**. On x86 CPUs without VNNI (AVX2 only, like this machine),
onnxruntime's u8s8 kernel multiplies uint8 activations by signed int8 weights with
``vpmaddubsw``, which adds pairs of products into int16 and saturates: with activations
near 255 and weights near +-127 a pair reaches 64770 > 32767 and the result is wrong
(``tests/test_quant.py`` shows it on a regression model; the measured errors are in
docs/quantization-choices.md). uint8 weights use the u8u8 kernel, which does not saturate and was
the most accurate option measured (signed with ``reduce_range`` gives up weight resolution).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from bcaudio.onnx_files import is_large, save_model
from bcaudio.quant.fragile import fp32_nodes
from bcaudio.quant.io import quiet_quantizer

# Conv stays fp32: dynamic ConvInteger has no per-channel weights and gains little on these small convs.
OP_TYPES = ("MatMul", "Gemm")


def quantize_int8(src: Path, dst: Path, graph: str, weight_type: QuantType = QuantType.QUInt8,
                  reduce_range: bool = False) -> list[Path]:
    """``src`` -> ``dst`` with dynamic int8 MatMul/Gemm; ``weight_type``/``reduce_range`` exist for the trap's test."""
    model = onnx.load(str(src))
    large = is_large(model)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp, quiet_quantizer():
        raw = Path(tmp) / "int8.onnx"
        quantize_dynamic(src, raw, op_types_to_quantize=list(OP_TYPES), per_channel=True, reduce_range=reduce_range,
                         weight_type=weight_type, nodes_to_exclude=fp32_nodes(graph, model),
                         use_external_data_format=large)
        return save_model(onnx.load(str(raw)), dst, graph)
