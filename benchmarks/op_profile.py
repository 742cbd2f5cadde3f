"""Where a decode step's time goes, by op, and how fast its weight-only kernels stream their weights.

At batch 1 a decode step multiplies one row by every weight matrix, so a MatMulNBits node's time is
mostly the time to read its packed weights, scales and zero points. If the kernel reads them near the
rate at which the machine streams memory (``benchmarks/bandwidth.py``), the kernel is the wall: only
fewer bytes (fewer bits: less accuracy) make the step faster, whoever built the graph. onnxruntime's
own profiler gives each node's kernel time; the node's initializers give the bytes it must read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bcaudio.benchmarks.roofline import step_graphs, tensor_bytes
from bcaudio.config import ModelConfig
from bcaudio.runtime.package.llm_state import LlmState

# words in a MatMul's node name -> what it multiplies (bcaudio's fast llm, onnxruntime-genai's builder)
ROLES = (("lm head", ("lm_head", "logits")), ("attention in", ("qkv", "q_proj", "k_proj", "v_proj")),
         ("attention out", ("attn_out", "o_proj")), ("mlp in", ("gate_up", "gate_proj", "up_proj")),
         ("mlp out", ("mlp_out", "down_proj")))

CONTAINERS = ("If", "Loop", "Scan")  # ops whose kernel time is that of their subgraphs' nodes


@dataclass
class OpGroup:
    name: str
    ms: float  # kernel time per step
    mb: float  # initializer MB its nodes read per step (MatMulNBits only; 0 for other ops)

    @property
    def gb_s(self) -> float | None:
        return self.mb / self.ms if self.mb and self.ms else None


def _role(node_name: str) -> str:
    lowered = node_name.lower()
    return next((role for role, words in ROLES if any(w in lowered for w in words)), "other")


def weight_groups(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """MatMulNBits node -> (``MatMulNBits <bits>-bit <role>``, bytes of its initializer inputs)."""
    graphs = list(step_graphs(model.graph))  # the lm_head may sit behind an If
    sizes = {t.name: tensor_bytes(t) for g in graphs for t in g.initializer}
    groups = {}
    for node in (n for g in graphs for n in g.node):
        if node.op_type == "MatMulNBits":
            bits = next(a.i for a in node.attribute if a.name == "bits")
            groups[node.name] = (f"MatMulNBits {bits}-bit {_role(node.name)}",
                                 sum(sizes.get(name, 0) for name in node.input))
    return groups


def profile_steps(graph: Path, threads: int, prepare: Callable[[ort.InferenceSession], object],
                  step: Callable[[ort.InferenceSession, object], None], steps: int) -> list[OpGroup]:
    """Kernel ms per step by op group over ``steps`` calls of ``step``; ``prepare`` (the prefill) runs on a
    session of its own, so the profile holds only the decode steps. Largest group first."""
    def session(profiled: bool) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        if profiled:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(graph.parent / "op-profile")
        return ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])

    state = prepare(session(False))
    profiled = session(True)
    for _ in range(steps):
        step(profiled, state)
    trace = Path(profiled.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    groups = weight_groups(onnx.load(str(graph), load_external_data=False))
    ms: dict[str, float] = {}
    mb: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if e["args"].get("op_name") in CONTAINERS:
            continue  # its time is its branch's nodes', which have events of their own
        node = e["name"][: -len("_kernel_time")]
        key, size = groups.get(node, (e["args"].get("op_name", node), 0))
        ms[key] = ms.get(key, 0.0) + e["dur"] / 1000 / steps
        mb[key] = mb.get(key, 0.0) + size / 1e6 / steps  # each node's bytes once per run of it
    return sorted((OpGroup(k, ms[k], mb[k]) for k in ms), key=lambda g: -g.ms)


def llm_profile(graph: Path, cfg: ModelConfig, context: int, threads: int, steps: int) -> list[OpGroup]:
    """``profile_steps`` of a bcaudio llm graph: one decode step at ``context`` random ids, ``steps`` times."""
    ids = np.random.default_rng(0).integers(0, 1000, context + 1).tolist()

    def prepare(session: ort.InferenceSession) -> LlmState:
        state = LlmState(session, cfg.llm.kv_heads, cfg.llm.head_dim, cfg.bridge.num_codebooks)
        state.feed(ids[:context])
        return state

    def step(session: ort.InferenceSession, state: LlmState) -> None:
        state.session = session  # the same bound cache, on the profiled session
        state.feed(ids[context:context + 1])
        state.truncate(context)

    return profile_steps(graph, threads, prepare, step, steps)
