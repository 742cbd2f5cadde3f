"""A manifest entry read from an ONNX file itself, so the manifest cannot disagree with the graph.

Needs ``onnx`` (export and quant have it) but not torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import onnx

from bcaudio.digests import sha256_file
from bcaudio.runtime.package.manifest import GraphEntry, TensorSpec

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64",
                onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
                onnx.TensorProto.BOOL: "bool"}


def _specs(values: Iterable[onnx.ValueInfoProto]) -> list[TensorSpec]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape: list[int | str] = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        out.append(TensorSpec(v.name, _ONNX_DTYPES[t.elem_type], shape))
    return out


def graph_entry(package: Path, files: list[Path], precision: str = "fp32", recipe: str = "fp32") -> GraphEntry:
    """``files[0]`` is the graph; any further files are its external data."""
    model = onnx.load(str(files[0]), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return GraphEntry(file=files[0].name, sha256={f.relative_to(package).as_posix(): sha256_file(f) for f in files},
                      opset=opset, inputs=_specs(model.graph.input), outputs=_specs(model.graph.output),
                      precision=precision, recipe=recipe)


