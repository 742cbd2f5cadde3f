"""Audio head: the step form (depth KV cache) equals the teacher-forced form; per-position FFN layout;
the exported step graph (an If tree of per-position branches) against torch and through the quantizers."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.audio_head import AudioHead, depth_inputs
from bcaudio.export.checkpoint import init_checkpoint
from bcaudio.export.export_audio_head import audio_head_io_names, export_audio_head
from bcaudio.export.llm import LLMBody
from bcaudio.export.package import export_package
from bcaudio.onnx_files import subgraphs
from bcaudio.presets import get_preset
from bcaudio.quant.accuracy import accuracy_report
from bcaudio.quant.package import quantize_package


def test_step_with_depth_cache_equals_teacher_forced(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    head = AudioHead(tiny_cfg).eval()
    tables = LLMBody(tiny_cfg.llm, tiny_cfg.bridge.codebook_sizes).audio_embed_layers
    hidden = torch.randn(2, tiny_cfg.llm.hidden_size)
    codes = torch.stack([torch.randint(0, n, (2,)) for n in tiny_cfg.bridge.codebook_sizes], dim=1)
    with torch.no_grad():
        inputs = depth_inputs(hidden, codes, tables)
        forced = head.teacher_forced(inputs)
        cache = None
        for pos in range(len(tiny_cfg.bridge.codebook_sizes)):
            logits, cache = head.step(inputs[:, pos], pos, cache)
            assert logits.shape == (2, tiny_cfg.bridge.codebook_sizes[pos] + 1)
            assert (logits - forced[pos]).abs().max() < 1e-5
    assert cache[0][0].shape[2] == 8


def test_depth_inputs_are_running_sums_of_code_embeddings(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    tables = LLMBody(tiny_cfg.llm, tiny_cfg.bridge.codebook_sizes).audio_embed_layers
    hidden = torch.randn(1, tiny_cfg.llm.hidden_size)
    codes = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    inputs = depth_inputs(hidden, codes, tables)
    assert torch.equal(inputs[:, 0], hidden)
    expected = tables[0](codes[:, 0]) + tables[1](codes[:, 1]) + tables[2](codes[:, 2])
    assert torch.allclose(inputs[:, 3], expected)


def test_per_position_ffn_views_the_stored_layout(tiny_cfg: ModelConfig) -> None:
    """linear1 (2d, 8d) reshaped to (2d, 8, d): position l's weight is the l-th d-wide column block."""
    head = AudioHead(tiny_cfg)
    layer = head.transformer_layers[0]
    d = tiny_cfg.llm.hidden_size
    assert layer.linear1.weight.shape == (2 * d, 8 * d)
    assert layer.linear2.weight.shape == (d, 16 * d)
    w1, w2 = layer.ffn_weights(3)
    assert torch.equal(w1, layer.linear1.weight[:, 3 * d:4 * d])
    assert torch.equal(w2, layer.linear2.weight[:, 6 * d:8 * d])


def _nodes(graph: onnx.GraphProto) -> Iterator[tuple[onnx.GraphProto, onnx.NodeProto]]:
    """Every node of ``graph`` and of its If branches, with the graph that holds it."""
    for g in subgraphs(graph):
        for node in g.node:
            yield g, node


@pytest.fixture(scope="module")
def head_graph(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelConfig, AudioHead, nn.ModuleList, Path]:
    """The exported tiny head with every parameter random (norm gains and attention biases too, which the
    default init leaves at 1 and 0 and so would hide a misplaced one)."""
    cfg = get_preset("tiny")
    torch.manual_seed(3)
    head = AudioHead(cfg).eval()
    tables = LLMBody(cfg.llm, cfg.bridge.codebook_sizes).audio_embed_layers
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 else 0.0))
    path = tmp_path_factory.mktemp("head") / "audio_head.onnx"
    assert export_audio_head(head, tables, cfg, path) == [path, path.with_name("audio_head.onnx.data")]
    return cfg, head, tables, path


def _frame_logits(session: ort.InferenceSession, cfg: ModelConfig, hidden: np.ndarray,
                  codes: np.ndarray) -> list[np.ndarray]:
    """The 8 calls of one frame, teacher-forced with ``codes`` (B, 8), as the runtime makes them."""
    names, _ = audio_head_io_names(cfg)
    b = hidden.shape[0]
    past = {n: np.zeros((b, cfg.audio_head_heads, 0, cfg.audio_head.head_dim), np.float32) for n in names[4:]}
    running, prev, out = np.zeros_like(hidden), np.zeros(b, np.int64), []
    for pos in range(len(cfg.bridge.codebook_sizes)):
        logits, running, *presents = session.run(None, {"hidden": hidden, "running": running, "prev_code": prev,
                                                        "position": np.array([pos]), **past})
        assert presents[0].shape == (b, cfg.audio_head_heads, pos + 1, cfg.audio_head.head_dim)
        out.append(logits)
        past, prev = dict(zip(names[4:], presents, strict=True)), codes[:, pos]
    return out


HEAD_ATOL = 1e-4  # fp32 parity of the step graph, the same as FP32_TOLERANCES["audio_head"] in export/validate.py


def head_gap(path: Path, cfg: ModelConfig, head: AudioHead, tables: nn.ModuleList) -> float:
    """The step graph at ``path`` against ``head`` teacher-forced on the same random frame (batch 2): the largest
    logit difference over the 8 positions. The one comparison the parity test and its negative control make."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hidden = torch.randn(2, cfg.llm.hidden_size)
    codes = torch.stack([torch.randint(0, n, (2,)) for n in cfg.bridge.codebook_sizes], dim=1)
    with torch.no_grad():
        forced = head.teacher_forced(depth_inputs(hidden, codes, tables))
    gap = 0.0
    for pos, logits in enumerate(_frame_logits(session, cfg, hidden.numpy(), codes.numpy())):
        assert logits.shape == (2, cfg.bridge.codebook_sizes[pos] + 1)
        gap = max(gap, float(np.abs(logits - forced[pos].numpy()).max()))
    return gap


def test_step_graph_equals_teacher_forced_torch(head_graph) -> None:
    """fp32 parity at batch 2, the weights in the .data file (as at every size: mapped, not copied)."""
    cfg, head, tables, path = head_graph
    assert head_gap(path, cfg, head, tables) < HEAD_ATOL


def test_head_parity_bound_fails_on_one_weight_scaled_by_1e_3(head_graph, tmp_path: Path) -> None:
    """The negative control: a graph exported with one depth layer's output projection scaled by 1 + 1e-3
    fails the same comparison against the unchanged head."""
    cfg, head, tables, _ = head_graph
    perturbed = copy.deepcopy(head)
    with torch.no_grad():
        perturbed.transformer_layers[-1].linear2.weight.mul_(1 + 1e-3)
    export_audio_head(perturbed, tables, cfg, tmp_path / "audio_head.onnx")
    assert head_gap(tmp_path / "audio_head.onnx", cfg, head, tables) > HEAD_ATOL


def test_every_matmul_reads_a_constant_of_its_own_graph(head_graph) -> None:
    """What makes the graph fast and quantizable: no weight is selected at run time (only the code table row)."""
    cfg, _, _, path = head_graph
    model = onnx.load(str(path))
    matmuls = [(g, n) for g, n in _nodes(model.graph) if n.op_type == "MatMul"]
    layers, positions = cfg.audio_head.layers, len(cfg.bridge.codebook_sizes)
    assert len(matmuls) == 2 * layers + 2 * layers * positions + positions
    assert all(n.input[1] in {t.name for t in g.initializer} for g, n in matmuls)
    gathered = sorted(n.input[0] for _, n in _nodes(model.graph) if n.op_type == "Gather")
    assert gathered == ["code_table", "code_table_offsets"]


def _float_weight_matmuls(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(1 for g, n in _nodes(model.graph) if n.op_type == "MatMul"
               and any(t.name == n.input[1] and t.data_type == onnx.TensorProto.FLOAT for t in g.initializer))


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_recipe_quantizes_every_branch_matmul_within_tolerance(tmp_path: Path, precision: str) -> None:
    ckpt = init_checkpoint(get_preset("tiny"), tmp_path / "ckpt", seed=0)
    export_package(ckpt, tmp_path / "fp32", graphs=["audio_head"], progress=lambda _: None)
    recipe = tmp_path / f"head_{precision}.toml"
    recipe.write_text(f'[graphs]\naudio_head = "{precision}"\n')
    quantize_package(tmp_path / "fp32", recipe, tmp_path / precision, progress=lambda _: None)
    assert _float_weight_matmuls(tmp_path / "fp32" / "audio_head.onnx") > 0
    assert _float_weight_matmuls(tmp_path / precision / "audio_head.onnx") == 0
    report = accuracy_report(tmp_path / precision, progress=lambda _: None)
    assert report.passed, report.table()
