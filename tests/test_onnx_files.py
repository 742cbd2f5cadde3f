"""Saving graphs: weights inside If branches count towards the external-data threshold and go to the data file;
the mapped graphs get an aligned data file at every size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bcaudio import onnx_files
from bcaudio.onnx_files import ALIGNMENT, MAPPED_GRAPHS, model_bytes, save_model


def _branchy_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``y = x @ (w_then if flag else w_else) + bias``, the two weights held by the If branches (as the audio
    head holds its per-position weights), ``bias`` by the main graph and ``shift`` by a Constant in a branch."""
    rng = np.random.default_rng(0)
    weights = {"w_then": rng.standard_normal((64, 64)).astype(np.float32),
               "w_else": rng.standard_normal((64, 64)).astype(np.float32),
               "shift": rng.standard_normal(64).astype(np.float32),
               "bias": rng.standard_normal(64).astype(np.float32)}

    def branch(name: str, shift: bool) -> onnx.GraphProto:
        nodes = [helper.make_node("MatMul", ["x", name], [f"{name}_mm"])]
        if shift:
            nodes += [helper.make_node("Constant", [], ["shift"], value=numpy_helper.from_array(weights["shift"])),
                      helper.make_node("Add", [f"{name}_mm", "shift"], [f"{name}_out"])]
        else:
            nodes += [helper.make_node("Identity", [f"{name}_mm"], [f"{name}_out"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT,
                                                                                 ["b", 64])],
                                 [numpy_helper.from_array(weights[name], name)])

    nodes = [helper.make_node("If", ["flag"], ["picked"], then_branch=branch("w_then", True),
                              else_branch=branch("w_else", False)),
             helper.make_node("Add", ["picked", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "branchy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64]),
                                                 helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 64])],
                              [numpy_helper.from_array(weights["bias"], "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, weights


def test_model_bytes_counts_subgraph_weights() -> None:
    model, weights = _branchy_model()
    assert model_bytes(model) == sum(w.nbytes for w in weights.values()) == 2 * 64 * 64 * 4 + 2 * 64 * 4


def test_large_branch_weights_are_saved_as_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, weights = _branchy_model()
    main_only = sum(len(t.raw_data) for t in model.graph.initializer)  # what was counted before: 256 bytes
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", 10_000)
    assert main_only < onnx_files.EXTERNAL_DATA_THRESHOLD <= model_bytes(model)
    path = tmp_path / "branchy.onnx"
    files = save_model(model, path)
    assert files == [path, tmp_path / "branchy.onnx.data"]
    big = weights["w_then"].nbytes + weights["w_else"].nbytes
    assert path.stat().st_size < weights["w_then"].nbytes <= big <= files[1].stat().st_size
    stub = onnx.load(str(path), load_external_data=False)
    branches = {a.name: a.g for a in stub.graph.node[0].attribute}
    for key, name in (("then_branch", "w_then"), ("else_branch", "w_else")):
        (tensor,) = branches[key].initializer
        assert tensor.name == name and tensor.data_location == TensorProto.EXTERNAL and not tensor.raw_data
    constant = branches["then_branch"].node[1].attribute[0].t  # 256 bytes: under the 1 KB inline threshold
    assert constant.data_location == TensorProto.DEFAULT and constant.raw_data

    loaded = onnx.load(str(path))  # round trip through the data file
    branches = {a.name: a.g for a in loaded.graph.node[0].attribute}
    for key, name in (("then_branch", "w_then"), ("else_branch", "w_else")):
        np.testing.assert_array_equal(numpy_helper.to_array(branches[key].initializer[0]), weights[name])
    assert model_bytes(loaded) == model_bytes(_branchy_model()[0])
    assert model_bytes(stub) == model_bytes(loaded)  # an unloaded external tensor counts by its recorded length
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    for flag, want in ((True, x @ weights["w_then"] + weights["shift"]), (False, x @ weights["w_else"])):
        (got,) = session.run(None, {"x": x, "flag": np.array(flag)})
        np.testing.assert_allclose(got, want + weights["bias"], rtol=1e-5, atol=1e-5)


def test_small_model_stays_one_file(tmp_path: Path) -> None:
    model, _ = _branchy_model()
    (tmp_path / "m.onnx.data").write_bytes(b"stale")  # a stale data file from an earlier, larger save goes
    assert save_model(model, tmp_path / "m.onnx") == [tmp_path / "m.onnx"]
    assert not (tmp_path / "m.onnx.data").exists()


@pytest.mark.parametrize("graph", sorted(MAPPED_GRAPHS))
def test_a_mapped_graph_gets_aligned_external_data_at_any_size(tmp_path: Path, graph: str) -> None:
    """The same 33 KB model: one file under another name (the control), a data file with 4096-aligned offsets under
    a mapped graph's name, and the same outputs from both."""
    model, weights = _branchy_model()
    assert save_model(onnx.ModelProto.FromString(model.SerializeToString()), tmp_path / "vocoder.onnx",
                      "vocoder") == [tmp_path / "vocoder.onnx"]
    path = tmp_path / f"{graph}.onnx"
    files = save_model(model, path, graph)
    assert files == [path, tmp_path / f"{graph}.onnx.data"]
    assert not list(tmp_path.glob("*.partial"))
    stub = onnx.load(str(path), load_external_data=False)
    external = [t for g in onnx_files.subgraphs(stub.graph) for t in g.initializer
                if t.data_location == TensorProto.EXTERNAL]
    assert sorted(t.name for t in external) == ["w_else", "w_then"]  # the 256-byte bias stays inline
    offsets = [int({e.key: e.value for e in t.external_data}["offset"]) for t in external]
    assert all(o % ALIGNMENT == 0 for o in offsets) and len(set(offsets)) == 2
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    inline = ort.InferenceSession(str(tmp_path / "vocoder.onnx"), providers=["CPUExecutionProvider"])
    mapped = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for flag in (True, False):
        feed = {"x": x, "flag": np.array(flag)}
        np.testing.assert_array_equal(mapped.run(None, feed)[0], inline.run(None, feed)[0])
    (got,) = mapped.run(None, {"x": x, "flag": np.array(False)})
    np.testing.assert_allclose(got, x @ weights["w_else"] + weights["bias"], rtol=1e-5, atol=1e-5)
