"""Bytes a decode step must read: the numerator of the memory-bandwidth roofline.

One decode step multiplies one position by every weight matrix (MatMul / MatMulNBits / quantized
MatMul weights with their scales and zero points, the lm_head included) and reads the whole KV
cache; of an embedding table it reads one row, and of the rotary cos/sin tables one row too. The
ideal step reads exactly that once, so ``bytes / bandwidth`` is the fastest any implementation of
this model at this precision can decode on this machine. Counted from the graph itself, not from a
formula, so each variant is charged for the precision it really stores.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from bcaudio.runtime.package.llm_state import WITH_LOGITS

# op -> inputs that are tables of which a step reads one row per index (the rest of the op's inputs are activations)
ROW_TABLES = {"Gather": (0,), "GatherBlockQuantized": (0, 2, 3), "GroupQueryAttention": (7, 8),
              "RotaryEmbedding": (2, 3)}
_PACKED_4BIT = (TensorProto.INT4, TensorProto.UINT4)


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Stored bytes of an initializer from its dims and type (external data is never read)."""
    count = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
    if t.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    return count * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def step_graphs(graph: onnx.GraphProto, logits: bool = True) -> Iterator[onnx.GraphProto]:
    """``graph`` and the subgraphs a step runs: without ``logits``, not the lm_head's branch (export/fast_llm.py)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            lm_head = node.op_type == "If" and node.input[0] == WITH_LOGITS and attr.name == "then_branch"
            skipped = lm_head and not logits
            if attr.type == onnx.AttributeProto.GRAPH and not skipped:
                yield from step_graphs(attr.g, logits)


def onnx_step_bytes(path: Path, logits: bool = True) -> int:
    """Initializer bytes one decode step of the graph at ``path`` reads: all of every weight, one row of a table;
    with ``logits=False`` those of a step fed ``with_logits`` false (an audio frame's), when the graph has it.

    An initializer read as a table by one node and as a whole by another counts whole.
    """
    model = onnx.load(str(path), load_external_data=False)
    graphs = list(step_graphs(model.graph, logits))
    uses: dict[str, set[bool]] = defaultdict(set)  # initializer -> {read as rows?}
    for node in (n for g in graphs for n in g.node):
        rows = ROW_TABLES.get(node.op_type, ())
        for i, name in enumerate(node.input):
            uses[name].add(i in rows)
    total = 0
    for t in (t for g in graphs for t in g.initializer):
        size = tensor_bytes(t)
        if uses.get(t.name) == {True} and t.dims:
            size //= t.dims[0]
        total += size
    return total


def torch_step_bytes(module: object) -> int:
    """The same count for a torch module: every parameter whole, one row of each ``nn.Embedding``."""
    from torch import nn

    assert isinstance(module, nn.Module)
    tables = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() * p.element_size() // (p.shape[0] if id(p) in tables else 1) for p in module.parameters())


def kv_step_bytes(layers: int, kv_heads: int, head_dim: int, context: int, itemsize: int = 4) -> int:
    """Bytes of K and V a step at ``context`` past positions reads (every layer, both tensors)."""
    return 2 * layers * kv_heads * head_dim * context * itemsize
