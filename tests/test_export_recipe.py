"""`bcaudio export --recipe`: graphs quantized while written equal export-then-`bcaudio quantize`, graph for graph.

Equal means: the same nodes in the same order (op, domain, inputs, outputs, attributes, If branches
recursively) and every initializer bit-identical under the same name. Also: inputs are checked before
anything is written (missing tokenizer, missing vocoder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from mapped_graphs import assert_mapped_layout
from onnx import numpy_helper

from bcaudio.cli import main
from bcaudio.export.checkpoint import CheckpointError, init_checkpoint
from bcaudio.export.package import export_package
from bcaudio.presets import get_preset
from bcaudio.quant.fp16 import CHUNK, to_fp16
from bcaudio.quant.package import quantize_package
from bcaudio.quant.recipes import Recipe
from bcaudio.runtime.package.manifest import load_manifest

QUIET = lambda _: None  # noqa: E731


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_checkpoint(get_preset("tiny"), tmp_path_factory.mktemp("recipe") / "ckpt", seed=3)


def _canonical(graph: onnx.GraphProto) -> tuple[list, dict[str, np.ndarray]]:
    """(nodes, initializers) with If branches unfolded, so two graphs compare by value."""
    nodes, tensors = [], {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        attrs = []
        for a in sorted(n.attribute, key=lambda a: a.name):
            if a.type == onnx.AttributeProto.GRAPH:
                sub_nodes, sub_tensors = _canonical(a.g)
                tensors.update(sub_tensors)
                attrs.append((a.name, sub_nodes))
            else:
                attrs.append((a.name, onnx.helper.get_attribute_value(a)))
        nodes.append((n.op_type, n.domain or "", n.name, list(n.input), list(n.output), attrs))
    return nodes, tensors


def assert_same_graph(a: Path, b: Path) -> None:
    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    (na, ta), (nb, tb) = _canonical(ma.graph), _canonical(mb.graph)
    assert na == nb, f"{a.name}: nodes differ"
    assert sorted(ta) == sorted(tb), f"{a.name}: initializer names differ"
    for name, value in ta.items():
        assert value.dtype == tb[name].dtype and np.array_equal(value, tb[name]), f"{a.name}: {name} differs"
    assert [(o.domain, o.version) for o in ma.opset_import] == [(o.domain, o.version) for o in mb.opset_import]


@pytest.mark.parametrize("recipe", [
    "int4",  # the built-in: int4 llm and audio head, the rest copied
    Recipe("int8", {"llm": "int8", "flow_estimator": "int8"}),  # 8-bit blocks while written; dynamic int8 after
    # fp16: the built graphs converted while written (plan_fp16), a torch-exported one from a temporary fp32 graph
    Recipe("fp16", {"llm": "fp16", "audio_head": "fp16", "flow_estimator": "fp16"}),
], ids=["int4", "int8", "fp16"])
def test_direct_recipe_equals_export_then_quantize(tiny: Path, tmp_path: Path, recipe: str | Recipe) -> None:
    graphs = ["llm", "audio_head", "flow_prenet"] if recipe == "int4" else list(recipe.precisions)
    name = recipe if isinstance(recipe, str) else recipe.name
    export_package(tiny, tmp_path / "fp32", graphs=graphs, progress=QUIET)
    quantize_package(tmp_path / "fp32", recipe, tmp_path / "two-step", progress=QUIET)
    export_package(tiny, tmp_path / "direct", graphs=graphs, progress=QUIET, recipe=recipe)
    two, direct = load_manifest(tmp_path / "two-step"), load_manifest(tmp_path / "direct")  # sha256 verified
    assert direct.recipe == two.recipe == name
    for graph in graphs:
        assert direct.graphs[graph].precision == two.graphs[graph].precision
        assert direct.graphs[graph].recipe == two.graphs[graph].recipe == name
        assert_same_graph(tmp_path / "two-step" / f"{graph}.onnx", tmp_path / "direct" / f"{graph}.onnx")
    if recipe == "int4":  # both fold the q|k|v bias into MatMulNBits (quant/bias_fold.py): the same graph, folded
        llm = onnx.load(str(tmp_path / "direct" / "llm.onnx"))
        assert sum(n.op_type == "MatMulNBits" and len(n.input) == 6 for n in llm.graph.node) == \
            get_preset("tiny").llm.layers
    assert not [p for p in (tmp_path / "direct").iterdir() if p.name.startswith(".")]  # no temporary left
    if "audio_head" in graphs:  # written tensor by tensor (int4, fp16) or copied (flow_prenet at int4)
        assert_mapped_layout(tmp_path / "direct")


def test_fp16_weights_are_the_converters_bit_for_bit() -> None:
    """``to_fp16`` against onnxruntime's ``convert_np_to_float16`` (what ``bcaudio quantize`` stores): values too
    small or too large for fp16, zeros of both signs, NaN and infinities, over more than one chunk, and a
    transposed (not C-contiguous) weight as the llm's MatMuls hand it over."""
    from onnxruntime.transformers.float16 import convert_np_to_float16

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(CHUNK + 1000) * np.exp(rng.uniform(-40, 15, CHUNK + 1000))).astype(np.float32)
    x[:13] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-9, -1e-9, 7e5, -7e5, 5.96e-8, 65504, 65520, 3e-8]
    x[CHUNK:CHUNK + 4] = [1e-30, -1e30, np.nan, 0.0]  # the second chunk has its own odd values
    want = convert_np_to_float16(x).view(np.uint16)
    assert np.array_equal(to_fp16(x).view(np.uint16), want)
    matrix = x[:1200 * 900].reshape(1200, 900)
    assert np.array_equal(to_fp16(matrix.T).view(np.uint16), convert_np_to_float16(matrix.T).view(np.uint16))


def test_recipe_toml_and_cli(tiny: Path, tmp_path: Path) -> None:
    toml = tmp_path / "kiosk.toml"
    toml.write_text('block_size = 64\n[graphs]\nllm = "int4"\n')
    assert main(["export", "--checkpoint", str(tiny), "--out", str(tmp_path / "pkg"), "--graphs", "llm,flow_prenet",
                 "--recipe", str(toml)]) == 0
    manifest = load_manifest(tmp_path / "pkg")
    assert manifest.recipe == "kiosk" and manifest.source["int4_block_size"] == "64"
    assert (manifest.graphs["llm"].precision, manifest.graphs["flow_prenet"].precision) == ("int4", "fp32")
    nbits = [n for n in onnx.load(str(tmp_path / "pkg" / "llm.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert nbits and {a.i for n in nbits for a in n.attribute if a.name == "block_size"} == {64}


def _no_graph_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def test_missing_tokenizer_is_refused_before_any_graph(tiny: Path, tmp_path: Path, capsys) -> None:
    ckpt = Path(shutil.copytree(tiny, tmp_path / "ckpt"))
    for name in ("tokenizer.json", "vocab.json"):
        (ckpt / name).unlink()
    with pytest.raises(Exception, match="no text tokenizer"):
        export_package(ckpt, tmp_path / "pkg", progress=QUIET)
    assert _no_graph_written(tmp_path / "pkg")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "pkg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer" in err[0] and "Traceback" not in err[0]
    assert _no_graph_written(tmp_path / "pkg")


def test_missing_vocoder_is_refused_before_any_graph(tiny: Path, tmp_path: Path, capsys) -> None:
    ckpt = Path(shutil.copytree(tiny, tmp_path / "ckpt"))
    hift = ckpt / "hift.pt"
    moved = Path(shutil.move(hift, tmp_path / "hift.pt"))
    with pytest.raises(CheckpointError, match="--vocoder"):
        export_package(ckpt, tmp_path / "pkg", progress=QUIET)
    assert _no_graph_written(tmp_path / "pkg")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "pkg"), "--vocoder",
                 str(tmp_path / "nope.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert _no_graph_written(tmp_path / "pkg")
    # the vocoder from elsewhere (as published: the code repository's hift.pt)
    manifest = export_package(ckpt, tmp_path / "pkg", graphs=["vocoder"], progress=QUIET, vocoder=moved)
    assert list(manifest.graphs) == ["vocoder"]
