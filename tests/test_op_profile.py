"""The decode-step op profile (benchmarks/op_profile.py): every int4 llm kernel group timed and charged its weights."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from bcaudio.benchmarks.op_profile import llm_profile
from bcaudio.onnx_files import subgraphs
from bcaudio.quant.blocks import quantize_blocks
from bcaudio.runtime.package.manifest import load_manifest


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    nodes = list(graph.node)
    for node in graph.node:
        nodes += [n for a in node.attribute if a.type == onnx.AttributeProto.GRAPH for n in _all_nodes(a.g)]
    return nodes


def test_each_matmulnbits_group_is_timed_and_charged_its_weights(tiny_exported: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    _, pkg = tiny_exported
    manifest = load_manifest(pkg, verify=False)
    graph = tmp_path / "llm.onnx"
    quantize_blocks(pkg / manifest.graphs["llm"].file, graph, "llm", 4, 32, progress=lambda _: None)
    groups = llm_profile(graph, manifest.model_config(), context=8, threads=1, steps=3)

    by_name = {g.name: g for g in groups}
    assert {"MatMulNBits 4-bit mlp in", "MatMulNBits 4-bit mlp out", "MatMulNBits 4-bit lm head",
            "MatMulNBits 8-bit attention in", "MatMulNBits 8-bit attention out"} <= set(by_name)
    assert "GroupQueryAttention" in by_name and by_name["GroupQueryAttention"].mb == 0
    assert "If" not in by_name, "the lm_head's If counts its branch's time a second time"
    model = onnx.load(str(graph))  # the weights themselves, loaded, not the profile's count from dims
    arrays = {t.name: numpy_helper.to_array(t).nbytes for g in subgraphs(model.graph) for t in g.initializer}
    weights = sum(arrays.get(i, 0) for n in _all_nodes(model.graph) if n.op_type == "MatMulNBits" for i in n.input)
    assert sum(g.mb for g in groups) * 1e6 == pytest.approx(weights)
    assert all(g.ms > 0 for g in groups)
    assert groups == sorted(groups, key=lambda g: -g.ms)
    assert not list(tmp_path.glob("op-profile*")), "the profiler's trace file is left behind"
