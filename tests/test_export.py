"""The exported LLM and audio-head graphs, run on onnxruntime: parity, KV cache, and `bcaudio validate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mapped_graphs import assert_mapped_layout

from bcaudio.cli import main
from bcaudio.config import ModelConfig
from bcaudio.export.audio_head import AudioHead, depth_inputs
from bcaudio.export.checkpoint import init_checkpoint, load_checkpoint
from bcaudio.export.export_audio_head import audio_head_io_names, export_audio_head
from bcaudio.export.export_llm import export_llm, llm_example_inputs, llm_io_names
from bcaudio.export.llm import BaichuanLLM
from bcaudio.export.validate import CHECKS, FP32_TOLERANCES, validate_package
from bcaudio.presets import get_preset
from bcaudio.runtime.package.sessions import PackageSessions


@pytest.fixture(scope="module")
def llm_graph(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelConfig, BaichuanLLM, ort.InferenceSession]:
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    llm = BaichuanLLM(cfg.llm, cfg.bridge.codebook_sizes, cfg.tokens).eval()
    path = tmp_path_factory.mktemp("llm") / "llm.onnx"
    export_llm(llm, cfg, path)
    return cfg, llm, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch,new,past", [(1, 6, 0), (2, 1, 9), (2, 7, 4)])
def test_llm_graph_matches_torch(llm_graph, batch: int, new: int, past: int) -> None:
    cfg, llm, session = llm_graph
    feeds = llm_example_inputs(cfg, batch, new, past, seed=batch * 10 + new)
    names, _ = llm_io_names(cfg)
    cache = [(torch.from_numpy(feeds[names[3 + 2 * i]]), torch.from_numpy(feeds[names[4 + 2 * i]]))
             for i in range(cfg.llm.layers)]
    with torch.no_grad():
        logits, hidden, presents = llm(*(torch.from_numpy(feeds[n]) for n in names[:3]), cache)
    out = session.run(None, feeds)
    assert np.abs(out[0] - logits.numpy()).max() < 1e-4
    assert np.abs(out[1] - hidden.numpy()).max() < 1e-4
    assert out[2].shape == (batch, cfg.llm.kv_heads, past + new, cfg.llm.head_dim)
    assert np.abs(out[2] - presents[0][0].numpy()).max() < 1e-4


@pytest.mark.parametrize("batch", [1, 2])
def test_llm_graph_prefill_then_decode_equals_one_prefill(llm_graph, batch: int) -> None:
    cfg, _, session = llm_graph
    n, m = 10, 5
    full = llm_example_inputs(cfg, batch, n + m, past=0, seed=3)
    names, _ = llm_io_names(cfg)
    inputs = names[:3]
    once = session.run(None, full)
    cache = {k: full[k] for k in names[3:]}  # past length 0
    out = session.run(None, {**{k: full[k][:, :n] for k in inputs}, **cache})
    hidden = [out[1]]
    for i in range(n, n + m):
        cache = dict(zip(names[3:], out[2:], strict=True))
        out = session.run(None, {**{k: full[k][:, i:i + 1] for k in inputs}, **cache})
        hidden.append(out[1])
    assert np.abs(np.concatenate(hidden, axis=1) - once[1]).max() < 1e-5
    assert np.abs(out[0] - once[0]).max() < 1e-4


def test_audio_head_step_graph_equals_teacher_forced(tmp_path: Path) -> None:
    cfg = get_preset("tiny")
    torch.manual_seed(1)
    head = AudioHead(cfg).eval()
    llm = BaichuanLLM(cfg.llm, cfg.bridge.codebook_sizes, cfg.tokens)
    tables = llm.model.audio_embed_layers
    export_audio_head(head, tables, cfg, tmp_path / "head.onnx")
    session = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    hidden = torch.randn(2, cfg.llm.hidden_size)
    codes = torch.stack([torch.randint(0, n, (2,)) for n in cfg.bridge.codebook_sizes], 1)
    with torch.no_grad():
        forced = head.teacher_forced(depth_inputs(hidden, codes, tables))
    names, _ = audio_head_io_names(cfg)
    past = {n: np.zeros((2, cfg.audio_head_heads, 0, cfg.audio_head.head_dim), np.float32) for n in names[4:]}
    running, prev = np.zeros((2, cfg.llm.hidden_size), np.float32), np.zeros(2, np.int64)
    for pos in range(8):
        out = session.run(None, {"hidden": hidden.numpy(), "running": running, "prev_code": prev,
                                 "position": np.array([pos]), **past})
        assert out[0].shape == (2, cfg.bridge.codebook_sizes[pos] + 1)
        assert np.abs(out[0] - forced[pos].numpy()).max() < 1e-4
        running, prev = out[1], codes[:, pos].numpy()
        past = dict(zip(names[4:], out[2:], strict=True))


def test_validate_passes_every_graph_of_a_tiny_package(tiny_exported, speech_16k: np.ndarray) -> None:
    ckpt, pkg = tiny_exported
    reports = validate_package(pkg, ckpt, speech_16k, progress=lambda _: None)
    assert [r.graph for r in reports] == ["audio_tokenizer", "llm", "audio_head", "flow_prenet", "flow_estimator",
                                          "vocoder"]
    failed = [r for r in reports if not r.passed]
    assert not failed, failed
    assert all(r.task_value == 1.0 for r in reports if r.graph in ("audio_tokenizer", "llm", "audio_head"))


def test_audio_head_and_flow_prenet_have_aligned_external_data(tiny_exported) -> None:
    assert_mapped_layout(tiny_exported[1])


def test_validate_cli_json_and_exit_code(tiny_exported, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ckpt, pkg = tiny_exported
    assert main(["validate", str(pkg), "--checkpoint", str(ckpt), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["graph"] for r in rows} >= {"llm", "vocoder"} and all(r["passed"] for r in rows)
    other = init_checkpoint(get_preset("tiny"), tmp_path / "other", seed=9)  # different weights
    assert main(["validate", str(pkg), "--checkpoint", str(other)]) == 2
    assert "validation failed" in capsys.readouterr().err


GRAPH_PART = {"audio_tokenizer": "bridge", "llm": "llm", "audio_head": "audio_head", "flow_prenet": "prenet",
              "flow_estimator": "estimator", "vocoder": "vocoder"}


@pytest.mark.parametrize("graph", list(GRAPH_PART))
def test_validate_fails_a_graph_whose_reference_weight_has_one_percent_noise(tiny_exported, graph: str) -> None:
    """Negative control of every fp32 tolerance: the same check that passes fails once one weight tensor of the
    compared part (its largest) gets noise of 1 % of its spread on the torch side only (noise, not a scale:
    norms would undo a uniform scale)."""
    ckpt, pkg = tiny_exported
    ref = load_checkpoint(ckpt)
    sessions = PackageSessions(pkg, log=lambda _: None)
    check, tol = CHECKS[graph], FP32_TOLERANCES[graph]
    assert check(ref, sessions, None).judge(tol).passed
    name, weight = max(getattr(ref, GRAPH_PART[graph]).named_parameters(), key=lambda p: p[1].numel())
    with torch.no_grad():
        weight.add_(0.01 * weight.std() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    report = check(ref, sessions, None).judge(tol)
    assert not report.passed, f"{graph}: {name} + 1 % noise still passes ({report})"
