"""The audio-head step graph built node by node from the checkpoint weights, for ONNX Runtime's fast CPU path.

Why not torch.onnx.export: a depth position's FFN and head weights must be chosen by the
``position`` input, and a traced graph can only do that with a Gather on a stacked weight,
which copies ~40 MB per call on ``small``, keeps ONNX Runtime from prepacking the MatMul
weights and hides them from the int4/int8 quantizers. Here each position owns a branch of an
``If`` tree on ``position`` (depth 3 for 8 positions) whose MatMuls read constant initializers
of that branch; the attention, shared by all positions, stays in the main graph. Attention and
norms use ONNX Runtime's fused contrib operators (MultiHeadAttention with a past/present
cache, SkipSimplifiedLayerNormalization, Gelu), so one head layer is a handful of kernels.

Per layer: ``r = rms2(h + attn(rms1(h)))``, ``h = r + ffn_p(r)``; the head reads ``rms(h)``
(see :class:`bcaudio.export.audio_head.DepthLayer`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from bcaudio.config import ModelConfig
from bcaudio.export.deferred import Deferred, Thunk
from bcaudio.export.weights import Weights

MS = "com.microsoft"
# A leaf of the position tree: (graph builder, position) -> its output names; it adds its nodes and weights.
Leaf = Callable[["_Graph", int], list[str]]


def _get(w: Weights, key: str) -> Thunk:
    return lambda: w.get(key)


def _get_t(w: Weights, key: str) -> Thunk:
    """A torch Linear weight (out, in) as the MatMul weight (in, out)."""
    return lambda: w.get(key).T


def _columns_t(w: Weights, key: str, start: int, stop: int) -> Thunk:
    return lambda: w.columns(key, start, stop).T


class _Graph:
    """Nodes and initializers of one (sub)graph; node and tensor names are unique across the model, as
    quantizers need. Weights are placeholders of one shared :class:`Deferred` (7B: 6 GB of weights), read
    from the checkpoint only when the graph is written."""

    def __init__(self, prefix: str, deferred: Deferred) -> None:
        self.prefix, self.deferred = prefix, deferred
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []

    def const(self, name: str, value: np.ndarray | Thunk) -> str:
        full = f"{self.prefix}{name}"
        self.inits.append(self.deferred.tensor(full, value))
        return full

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, name: str = "",
           domain: str = "", **attrs: object) -> list[str]:
        node_name = f"{self.prefix}{name or op_type}_{len(self.nodes)}"
        outs = [f"{node_name}_out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, domain=domain or None, **attrs))
        if domain == MS:  # onnx shape inference skips contrib ops; the int8 quantizer needs their output types
            self.value_info += [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs if o]
        return outs

    def graph(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
              ) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, self.inits, value_info=self.value_info)


def _position_tree(g: _Graph, lt: dict[int, str], lo: int, hi: int, outputs: list[onnx.ValueInfoProto],
                   leaf: Leaf, tag: str) -> list[str]:
    """Outputs of ``leaf(p)`` for p = position in [lo, hi): nested ``If(position < mid)`` nodes."""
    if hi - lo == 1:
        return leaf(g, lo)
    mid = (lo + hi) // 2
    branches = {}
    for key, (a, b) in (("then_branch", (lo, mid)), ("else_branch", (mid, hi))):
        sub = _Graph(f"{tag}.{a}_{b}/", g.deferred)
        names = _position_tree(sub, lt, a, b, outputs, leaf, tag)
        sub.nodes += [helper.make_node("Identity", [n], [f"{sub.prefix}{o.name}"], name=f"{sub.prefix}out{i}")
                      for i, (n, o) in enumerate(zip(names, outputs, strict=True))]
        branch_out = [helper.make_value_info(f"{sub.prefix}{o.name}", o.type) for o in outputs]
        branches[key] = sub.graph(f"{tag}_{a}_{b}", [], branch_out)
    return g.op("If", [lt[mid]], len(outputs), name=f"{tag}.if{lo}_{hi}", **branches)


def _float(name: str, *shape: int | str | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def build_audio_head_graph(w: Weights, cfg: ModelConfig, opset: int) -> tuple[onnx.ModelProto, Deferred]:
    """The step graph of :mod:`bcaudio.export.export_audio_head` (same inputs and outputs), its weights
    deferred (see :func:`bcaudio.export.deferred.write_graph`)."""
    d, heads, positions = cfg.llm.hidden_size, cfg.audio_head_heads, cfg.bridge.num_codebooks
    eps = cfg.audio_head.rms_norm_eps
    g = _Graph("", Deferred())

    # depth input: hidden at p = 0, else running + table_{p-1}[prev_code]; Skip*Norm adds the two parts
    rows = [n + 1 for n in cfg.bridge.codebook_sizes]  # each table has an EOS row
    table = g.const("code_table", lambda: np.concatenate([w.get(f"model.audio_embed_layers.{k}.weight")
                                                          for k in range(positions)]))
    offsets = g.const("code_table_offsets", np.cumsum([0] + rows[:-1]).astype(np.int64))
    zero_i, one_i = g.const("zero_i64", np.zeros(1, np.int64)), g.const("one_i64", np.ones(1, np.int64))
    zero_f = g.const("zero_f32", np.zeros(1, np.float32))
    (prev_pos,) = g.op("Max", [g.op("Sub", ["position", one_i])[0], zero_i])
    (row,) = g.op("Add", [g.op("Gather", [offsets, prev_pos])[0], "prev_code"])
    (emb,) = g.op("Gather", [table, row], name="code_embedding")
    (first,) = g.op("Equal", ["position", zero_i])
    (base,) = g.op("Where", [first, "hidden", "running"])
    (skip,) = g.op("Where", [first, zero_f, emb])
    axis1 = g.const("axis1", np.ones(1, np.int64))
    base, skip = (g.op("Unsqueeze", [t, axis1])[0] for t in (base, skip))
    lt = {m: g.op("Less", ["position", g.const(f"pos_{m}", np.array([m], np.int64))], name=f"position_lt{m}")[0]
          for m in range(1, positions)}
    split = g.const("qkv_split", np.array([d, d, d], np.int64))
    headnorm = g.const("headnorm", _get(w, "audio_head.headnorm.weight"))

    residual, delta = base, skip
    layers = cfg.audio_head.layers
    for i in range(layers):
        key = f"audio_head.transformer_layers.{i}"
        att = f"{key}.self_attention"
        norm1 = g.const(f"l{i}.norm1", _get(w, f"{key}.layernorm1.weight"))
        normed, _, _, h = g.op("SkipSimplifiedLayerNormalization", [residual, delta, norm1],
                               [f"l{i}.n1", "", "", "depth_input" if i == 0 else f"l{i}.h"], name=f"l{i}.norm1",
                               domain=MS, epsilon=eps)
        (qkv,) = g.op("MatMul", [normed, g.const(f"l{i}.qkv.w", _get_t(w, f"{att}.in_proj_weight"))], name=f"l{i}.qkv")
        q, k, v = g.op("Split", [qkv, split], 3, axis=-1)
        (ctx,) = g.op("MultiHeadAttention", [q, k, v, g.const(f"l{i}.qkv.b", _get(w, f"{att}.in_proj_bias")), "", "",
                                             f"past_key.{i}", f"past_value.{i}"],
                      [f"l{i}.ctx", f"present_key.{i}", f"present_value.{i}"], name=f"l{i}.attention",
                      domain=MS, num_heads=heads)[:1]
        (out,) = g.op("MatMul", [ctx, g.const(f"l{i}.out.w", _get_t(w, f"{att}.out_proj.weight"))], name=f"l{i}.out")
        (residual,) = g.op("SkipSimplifiedLayerNormalization",
                           [h, out, g.const(f"l{i}.norm2", _get(w, f"{key}.layernorm2.weight")),
                            g.const(f"l{i}.out.b", _get(w, f"{att}.out_proj.bias"))],
                           [f"l{i}.r"], name=f"l{i}.norm2", domain=MS, epsilon=eps)
        last = i == layers - 1

        def leaf(sub: _Graph, p: int, i: int = i, key: str = key, last: bool = last, r: str = residual) -> list[str]:
            # linear1 (2d, P*d) and linear2 (d, P*2d) hold the positions side by side: position p's columns
            w1 = _columns_t(w, f"{key}.linear1.weight", p * d, (p + 1) * d)
            w2 = _columns_t(w, f"{key}.linear2.weight", p * 2 * d, (p + 1) * 2 * d)
            (up,) = sub.op("MatMul", [r, sub.const(f"l{i}.p{p}.ffn1.w", w1)], name=f"l{i}.p{p}.ffn1")
            (act,) = sub.op("Gelu", [up], domain=MS)
            (f,) = sub.op("MatMul", [act, sub.const(f"l{i}.p{p}.ffn2.w", w2)], name=f"l{i}.p{p}.ffn2")
            if not last:
                return [f]
            (normed,) = sub.op("SkipSimplifiedLayerNormalization", [r, f, headnorm],
                               name="headnorm", domain=MS, epsilon=eps)
            (logits,) = sub.op("MatMul", [normed, sub.const(f"head.p{p}.w", _get_t(w, f"audio_head.heads.{p}.weight"))],
                               name=f"head.p{p}")
            return sub.op("Add", [logits, sub.const(f"head.p{p}.b", _get(w, f"audio_head.heads.{p}.bias"))],
                          name=f"head.p{p}.bias")

        outputs = [_float("logits3" if last else f"l{i}.f", "batch", 1, "classes" if last else d)]
        (delta,) = _position_tree(g, lt, 0, positions, outputs, leaf, f"l{i}.tree")
    g.op("Squeeze", [delta, axis1], ["logits"], name="logits")
    g.op("Squeeze", ["depth_input", axis1], ["running_x"], name="running_x")
    g.op("Where", [first, zero_f, "running_x"], ["running_out"], name="running_out")

    past = [_float(f"past_{kv}.{i}", "batch", heads, "depth", cfg.audio_head.head_dim)
            for i in range(layers) for kv in ("key", "value")]
    present = [_float(n.replace("past_", "present_"), "batch", heads, "depth_out", cfg.audio_head.head_dim)
               for n in (p.name for p in past)]
    inputs = [_float("hidden", "batch", d), _float("running", "batch", d),
              helper.make_tensor_value_info("prev_code", TensorProto.INT64, ["batch"]),
              helper.make_tensor_value_info("position", TensorProto.INT64, [1]), *past]
    outputs = [_float("logits", "batch", "classes"), _float("running_out", "batch", d), *present]
    graph = g.graph("audio_head", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
                              producer_name="bcaudio")
    return model, g.deferred
