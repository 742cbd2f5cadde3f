"""Bias ``Add``s folded into MatMulNBits' own ``bias`` input: one kernel instead of two per projection.

A decode step on the CPU is a chain of MatMulNBits calls with small elementwise ops between them;
each op between two of them is one more kernel launch and one more pass over the activations. The
llm's q|k|v projection (Qwen2 has biases there) and any other MatMul followed by the Add of a
constant 1-D bias of its output width can take the bias inside MatMulNBits (input 5: A, B, scales,
zero_points, g_idx, bias), which adds it in the kernel's epilogue. Both quantizers apply the same
rule (quant/blocks.py on a whole graph, quant/streamed.py while ``export --recipe`` writes one), so
both write the same graph; tests/test_quant.py checks the logits against the unfolded graph.
"""

from __future__ import annotations

import onnx

from bcaudio.onnx_files import ConstantInfo, input_uses, subgraphs

BIAS_INPUT = 5



def initializer_info(model: onnx.ModelProto) -> ConstantInfo:
    """Shapes and types of ``model``'s initializers (every subgraph's), as they are stored."""
    tensors = {t.name: t for g in subgraphs(model.graph) for t in g.initializer}

    def info(name: str) -> tuple[tuple[int, ...], bool] | None:
        t = tensors.get(name)
        return None if t is None else (tuple(t.dims), t.data_type == onnx.TensorProto.FLOAT)

    return info


def fold_bias_adds(model: onnx.ModelProto, constant: ConstantInfo) -> int:
    """Fold, in place, each ``Add(MatMulNBits(x), bias)`` whose MatMulNBits output nothing else reads and whose
    ``bias`` is a float32 constant of shape (N,) into the MatMulNBits node; -> how many were folded."""
    uses = input_uses(model)
    folded = 0
    for graph in subgraphs(model.graph):
        outputs = {o.name for o in graph.output}
        readers = {i: n for n in graph.node for i in n.input}
        for node in [n for n in graph.node if n.op_type == "MatMulNBits"]:
            out = node.output[0]
            add = readers.get(out)
            if (add is None or add.op_type != "Add" or uses.get(out) != 1 or out in outputs
                    or len(node.input) > BIAS_INPUT):
                continue
            n_out = next(a.i for a in node.attribute if a.name == "N")
            bias = next((i for i in add.input if i != out), None)
            if bias is None or constant(bias) != ((n_out,), True):
                continue
            inputs = list(node.input) + [""] * (BIAS_INPUT - len(node.input))
            node.ClearField("input")
            node.input.extend([*inputs, bias])
            node.output[0] = add.output[0]
            graph.node.remove(add)
            folded += 1
    return folded
