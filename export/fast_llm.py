"""The LLM as a graph of ONNX Runtime's fused operators, built directly from the weights.

The torch export (export_llm.py) is the readable reference; this graph is what the runtime runs by
default. Per layer it is SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization for the
RMS norms and residual adds, one MatMul for q|k|v (``W_pack``) feeding GroupQueryAttention with
rotary inside, one MatMul for gate|up, and plain MatMuls everywhere else, all with constant
weights, so ORT prepacks them and the int4 recipe turns every one into MatMulNBits.

I/O contract (B batch, T new positions, C cache capacity, L layers; the cache is *shared*: the
runtime binds the same buffer as past and present, GroupQueryAttention writes the T new positions
in place, and nothing is copied per step):

inputs
  input_ids              int64 (B, T)      text ids; ``<audio_pad_baichuan>`` marks an audio frame
  audio_codes            int64 (B, T, K)   codes of audio frames (ignored at text positions)
  seqlens_k              int32 (B,)        P + T - 1: the last valid cache index after this call
  total_sequence_length  int32 ()          P + T
  past_key.{l}           float (B, kv, C, D)   positions 0 .. P-1 valid; C >= P + T
  past_value.{l}         float (B, kv, C, D)
  with_logits            bool ()           optional, default true (an initializer of the same name)
outputs
  logits                 float (B, V)      of the last position only; (B, 0) when ``with_logits`` is false
  hidden_states          float (B, T, H)   final-normed; the audio head reads the last one
  present_key.{l}        float (B, kv, C, D)   the same buffer as past_key.{l}, P + T valid
  present_value.{l}

Positions are implicit (P .. P+T-1, from ``seqlens_k``): the cache length is the position, which
is how the speech loop uses it (truncation moves both).

``with_logits``: the speech loop reads the logits only on text steps, while the lm_head (V x H, the
largest single weight of ``small``) is read on every step; an ``If`` on it skips the lm_head on the
others (audio frames, prefills). Its else branch gives an empty (B, 0) tensor rather than zeros, so a
caller that reads logits it said it would not read fails at once. The lm_head lives in the then
branch, where the quantizers find it as they find the audio head's per-position weights. The torch
export (export_llm.py) has no such input: it is the readable reference, and the runtime feeds
``with_logits`` only to a session that has it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from bcaudio.config import ModelConfig
from bcaudio.export.deferred import Deferred, Rewrite, Thunk, write_graph
from bcaudio.export.llm import BaichuanLLM
from bcaudio.export.weights import Weights, module_weights
from bcaudio.runtime.package.llm_state import WITH_LOGITS

MS_DOMAIN = "com.microsoft"
# 21: the int4 recipe quantizes the embedding tables with GatherBlockQuantized, which needs it, and
# onnx cannot convert a graph holding contrib operators to a newer opset later.
FAST_LLM_OPSET = 21


def _quiet(_: str) -> None:
    pass


def fast_llm_io_names(cfg: ModelConfig) -> tuple[list[str], list[str]]:
    layers = range(cfg.llm.layers)
    past = [n for i in layers for n in (f"past_key.{i}", f"past_value.{i}")]
    present = [n for i in layers for n in (f"present_key.{i}", f"present_value.{i}")]
    return (["input_ids", "audio_codes", "seqlens_k", "total_sequence_length", *past, WITH_LOGITS],
            ["logits", "hidden_states", *present])


class _Graph:
    """Nodes and initializers under construction; names are unique by construction.

    Weights are :class:`~bcaudio.export.deferred.Deferred` placeholders: each is read from the
    checkpoint only when :func:`~bcaudio.export.deferred.write_graph` writes it, so building the
    graph of a 7B llm holds no weight at all, and writing it one tensor at a time.
    """

    def __init__(self, deferred: Deferred | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self.deferred = deferred or Deferred()

    def declare(self, name: str, width: int) -> None:
        """Type a contrib operator's output: onnx's shape inference cannot, and the quantizers need every type."""
        self.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "new", width]))

    def weight(self, name: str, value: np.ndarray | Thunk) -> str:
        self.initializers.append(self.deferred.tensor(name, value))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | str, domain: str = "", **attrs: object
           ) -> list[str]:
        outs = [outputs] if isinstance(outputs, str) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type}/{outs[0]}", domain=domain,
                                           **attrs))
        return outs


def _rotary_caches(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of (max positions, D/2), fp32 as Qwen2 computes them (rotate-half layout)."""
    c = cfg.llm
    inv_freq = 1.0 / (c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.float32) / c.head_dim))
    freqs = np.outer(np.arange(c.max_position_embeddings, dtype=np.float32), inv_freq.astype(np.float32))
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def _embedding(g: _Graph, w: Weights, cfg: ModelConfig) -> str:
    """Text or audio embedding per position: audio frames sum one row of each codebook's table."""
    sizes = [n + 1 for n in cfg.bridge.codebook_sizes]  # each table has an EOS row
    offsets = np.cumsum([0] + sizes[:-1]).astype(np.int64)
    g.weight("embed_tokens", lambda: w.get("model.embed_tokens.weight"))
    g.weight("audio_embed", lambda: np.concatenate([w.get(f"model.audio_embed_layers.{k}.weight")
                                                    for k in range(len(sizes))]))
    g.weight("audio_offsets", offsets)
    g.weight("audio_pad_id", np.array(cfg.tokens.audio_pad, dtype=np.int64))
    g.weight("reduce_codebooks", np.array([2], dtype=np.int64))
    g.op("Gather", ["embed_tokens", "input_ids"], "text_embeds")
    g.op("Add", ["audio_codes", "audio_offsets"], "audio_rows")
    g.op("Gather", ["audio_embed", "audio_rows"], "audio_row_embeds")
    g.op("ReduceSum", ["audio_row_embeds", "reduce_codebooks"], "audio_embeds", keepdims=0)
    g.op("Equal", ["input_ids", "audio_pad_id"], "is_audio")
    g.op("Unsqueeze", ["is_audio", "reduce_codebooks"], "is_audio_3d")
    return g.op("Where", ["is_audio_3d", "audio_embeds", "text_embeds"], "embeds")[0]


def _transposed(w: Weights, *keys: str) -> Thunk:
    """The MatMul weight (in, out) of torch Linear weights (out, in), several concatenated along out."""
    return lambda: np.concatenate([w.get(k) for k in keys]).T if len(keys) > 1 else w.get(keys[0]).T


def _layer(g: _Graph, w: Weights, cfg: ModelConfig, i: int, residual: str, normed: str) -> str:
    """One decoder layer from its input norm's output; -> the MLP output (the next norm adds the residual)."""
    c, eps = cfg.llm, cfg.llm.rms_norm_eps
    p, key = f"layers.{i}", f"model.layers.{i}"
    g.weight(f"{p}.qkv.weight", _transposed(w, f"{key}.self_attn.W_pack.weight"))
    g.weight(f"{p}.qkv.bias", lambda: w.get(f"{key}.self_attn.W_pack.bias"))
    g.op("MatMul", [normed, f"{p}.qkv.weight"], f"{p}.qkv_mm")
    g.op("Add", [f"{p}.qkv_mm", f"{p}.qkv.bias"], f"{p}.qkv")
    q_size, kv_size = c.heads * c.head_dim, c.kv_heads * c.head_dim
    g.weight(f"{p}.qkv_split", np.array([q_size, kv_size, kv_size], dtype=np.int64))
    g.op("Split", [f"{p}.qkv", f"{p}.qkv_split"], [f"{p}.q", f"{p}.k", f"{p}.v"], axis=-1)
    g.op("GroupQueryAttention", [f"{p}.q", f"{p}.k", f"{p}.v", f"past_key.{i}", f"past_value.{i}", "seqlens_k",
                                 "total_sequence_length", "rotary_cos", "rotary_sin"],
         [f"{p}.attn", f"present_key.{i}", f"present_value.{i}"], domain=MS_DOMAIN,
         num_heads=c.heads, kv_num_heads=c.kv_heads, do_rotary=1, rotary_interleaved=0)
    g.declare(f"{p}.attn", q_size)
    g.weight(f"{p}.o_proj.weight", _transposed(w, f"{key}.self_attn.o_proj.weight"))
    g.op("MatMul", [f"{p}.attn", f"{p}.o_proj.weight"], f"{p}.attn_out")
    g.weight(f"{p}.post_attention_layernorm.weight", lambda: w.get(f"{key}.post_attention_layernorm.weight"))
    g.op("SkipSimplifiedLayerNormalization", [f"{p}.attn_out", residual, f"{p}.post_attention_layernorm.weight"],
         [f"{p}.mlp_in", "", "", f"{p}.residual"], domain=MS_DOMAIN, epsilon=eps)
    g.declare(f"{p}.mlp_in", c.hidden_size)
    g.declare(f"{p}.residual", c.hidden_size)
    g.weight(f"{p}.gate_up.weight", _transposed(w, f"{key}.mlp.gate_proj.weight", f"{key}.mlp.up_proj.weight"))
    g.op("MatMul", [f"{p}.mlp_in", f"{p}.gate_up.weight"], f"{p}.gate_up")
    g.weight(f"{p}.gate_up_split", np.array([c.intermediate_size] * 2, dtype=np.int64))
    g.op("Split", [f"{p}.gate_up", f"{p}.gate_up_split"], [f"{p}.gate", f"{p}.up"], axis=-1)
    g.op("Sigmoid", [f"{p}.gate"], f"{p}.gate_sigmoid")
    g.op("Mul", [f"{p}.gate", f"{p}.gate_sigmoid"], f"{p}.gate_silu")
    g.op("Mul", [f"{p}.gate_silu", f"{p}.up"], f"{p}.act")
    g.weight(f"{p}.down_proj.weight", _transposed(w, f"{key}.mlp.down_proj.weight"))
    return g.op("MatMul", [f"{p}.act", f"{p}.down_proj.weight"], f"{p}.mlp_out")[0]


def _build(w: Weights, cfg: ModelConfig) -> _Graph:
    c, eps = cfg.llm, cfg.llm.rms_norm_eps
    g = _Graph()
    cos, sin = _rotary_caches(cfg)
    g.weight("rotary_cos", cos)
    g.weight("rotary_sin", sin)
    residual = _embedding(g, w, cfg)
    g.weight("layers.0.input_layernorm.weight", lambda: w.get("model.layers.0.input_layernorm.weight"))
    normed = g.op("SimplifiedLayerNormalization", [residual, "layers.0.input_layernorm.weight"], "layers.0.normed",
                  axis=-1, epsilon=eps, stash_type=1)[0]
    g.declare(normed, c.hidden_size)
    for i in range(c.layers):
        out = _layer(g, w, cfg, i, residual, normed)
        last = i + 1 == c.layers
        gamma = "norm.weight" if last else f"layers.{i + 1}.input_layernorm.weight"
        key = "model.norm.weight" if last else f"model.layers.{i + 1}.input_layernorm.weight"
        g.weight(gamma, lambda key=key: w.get(key))
        normed = "hidden_states" if last else f"layers.{i + 1}.normed"
        g.op("SkipSimplifiedLayerNormalization", [out, f"layers.{i}.residual", gamma],
             [normed, "", "", f"layers.{i + 1}.residual_in"], domain=MS_DOMAIN, epsilon=eps)
        residual = f"layers.{i + 1}.residual_in"
        g.declare(residual, c.hidden_size)
        if not last:
            g.declare(normed, c.hidden_size)
    _logits(g, w, cfg)
    return g


def _logits(g: _Graph, w: Weights, cfg: ModelConfig) -> None:
    """``logits`` = If(with_logits): the last position through the lm_head, else an empty (B, 0) tensor."""
    g.initializers.append(helper.make_tensor(WITH_LOGITS, TensorProto.BOOL, [], [True]))  # the default: a scalar
    then = _Graph(g.deferred)
    then.weight("last_index", np.array([-1], dtype=np.int64))
    then.op("Gather", ["hidden_states", "last_index"], "last_hidden", axis=1)
    then.weight("lm_head.weight", _transposed(w, "lm_head.weight"))
    then.op("MatMul", ["last_hidden", "lm_head.weight"], "last_logits")
    then.weight("squeeze_axes", np.array([1], dtype=np.int64))
    then.op("Squeeze", ["last_logits", "squeeze_axes"], "logits.computed")
    skip = _Graph(g.deferred)
    skip.op("Shape", ["hidden_states"], "logits.batch", end=1)
    skip.weight("logits.no_width", np.array([0], dtype=np.int64))
    skip.op("Concat", ["logits.batch", "logits.no_width"], "logits.empty_shape", axis=0)
    skip.op("ConstantOfShape", ["logits.empty_shape"], "logits.skipped",
            value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    f = TensorProto.FLOAT
    branches = {key: helper.make_graph(b.nodes, f"logits_{key}", [],
                                       [helper.make_tensor_value_info(out, f, ["batch", width])], b.initializers)
                for key, b, out, width in (("then_branch", then, "logits.computed", cfg.llm.vocab_size),
                                           ("else_branch", skip, "logits.skipped", 0))}
    g.op("If", [WITH_LOGITS], "logits", **branches)


def _model(g: _Graph, cfg: ModelConfig, opset: int) -> onnx.ModelProto:
    c, k = cfg.llm, cfg.bridge.num_codebooks
    f, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    cache = ["batch", c.kv_heads, "capacity", c.head_dim]
    in_names, out_names = fast_llm_io_names(cfg)
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "new"]),
              helper.make_tensor_value_info("audio_codes", i64, ["batch", "new", k]),
              helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", i32, []),
              *[helper.make_tensor_value_info(n, f, cache) for n in in_names[4:-1]],
              helper.make_tensor_value_info(WITH_LOGITS, TensorProto.BOOL, [])]
    # the width is symbolic: V, or 0 without logits (a fixed V would make ORT warn about every skipped step)
    outputs = [helper.make_tensor_value_info("logits", f, ["batch", "vocab"]),
               helper.make_tensor_value_info("hidden_states", f, ["batch", "new", c.hidden_size]),
               *[helper.make_tensor_value_info(n, f, cache) for n in out_names[2:]]]
    graph = helper.make_graph(g.nodes, "bcaudio_llm_fast", inputs, outputs, g.initializers, value_info=g.value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(MS_DOMAIN, 1)],
                              producer_name="bcaudio")
    model.ir_version = 8
    return model


def build_fast_llm(w: Weights, cfg: ModelConfig, opset: int = FAST_LLM_OPSET) -> tuple[onnx.ModelProto, Deferred]:
    """The graph with its weights still deferred (see :func:`bcaudio.export.deferred.write_graph`)."""
    g = _build(w, cfg)
    return _model(g, cfg, max(opset, FAST_LLM_OPSET)), g.deferred


def export_fast_llm(llm: BaichuanLLM | Weights, cfg: ModelConfig, path: Path, opset: int = FAST_LLM_OPSET,
                    rewrite: Rewrite | None = None, progress: Callable[[str], None] = _quiet) -> list[Path]:
    """Write the graph at ``opset`` or FAST_LLM_OPSET, whichever is newer (the package default is older);
    ``rewrite`` quantizes it tensor by tensor as it is written."""
    w = module_weights(llm) if isinstance(llm, torch.nn.Module) else llm
    model, deferred = build_fast_llm(w, cfg, opset)
    return write_graph(model, deferred, path, rewrite, progress, "llm")
