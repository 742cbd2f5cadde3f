"""Flow decoder: causality of the pre-net and the chunked U-Net, the Euler/CFG solver, ONNX parity, key layout."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bcaudio.config import ModelConfig
from bcaudio.export.export_flow import export_flow_estimator, export_flow_prenet, flow_estimator_example_inputs
from bcaudio.export.flow_estimator import FlowEstimator
from bcaudio.export.flow_prenet import FlowPrenet
from bcaudio.export.flow_reference import flow_mel, torch_cfg_estimator
from bcaudio.presets import get_preset
from bcaudio.runtime.generation.flow_solver import cosine_t_span, euler_cfg_solve


def _chunked(cfg: ModelConfig, chunk: int) -> ModelConfig:
    return dataclasses.replace(cfg, flow=dataclasses.replace(cfg.flow, static_chunk_size=chunk))


def _estimator(cfg: ModelConfig) -> FlowEstimator:
    torch.manual_seed(0)
    return FlowEstimator(cfg).eval()


def _prenet(cfg: ModelConfig) -> FlowPrenet:
    torch.manual_seed(1)
    return FlowPrenet(cfg).eval()


@torch.no_grad()
def test_prenet_is_causal(tiny_cfg: ModelConfig) -> None:
    prenet = _prenet(tiny_cfg)
    states = torch.randn(1, 24, tiny_cfg.flow.prenet_in_dim)
    changed = states.clone()
    changed[:, 10:] = torch.randn(1, 14, tiny_cfg.flow.prenet_in_dim)
    a, b = prenet(states), prenet(changed)
    assert a.shape == (1, tiny_cfg.flow.mel_bins, 24)
    assert (a[:, :, :10] - b[:, :, :10]).abs().max() == 0
    assert (a[:, :, 10:] - b[:, :, 10:]).abs().max() > 1e-3


@torch.no_grad()
def test_prenet_padding_mask_zeroes_padded_frames_only(tiny_cfg: ModelConfig) -> None:
    prenet = _prenet(tiny_cfg)
    states = torch.randn(2, 12, tiny_cfg.flow.prenet_in_dim)
    mask = torch.ones(2, 12)
    mask[1, 8:] = 0
    mu = prenet(states, mask)
    assert mu[1, :, 8:].abs().max() == 0
    assert (mu[1, :, :8] - prenet(states[1:, :8])[0]).abs().max() < 1e-5


@torch.no_grad()
def test_estimator_is_block_causal_in_static_chunks(tiny_cfg: ModelConfig) -> None:
    cfg = _chunked(tiny_cfg, 8)
    est = _estimator(cfg)
    inp = {k: torch.from_numpy(v[:1]) for k, v in flow_estimator_example_inputs(cfg, 30, seed=3).items()}
    base = est(**inp)
    later = {**inp, "x": inp["x"].clone(), "mu": inp["mu"].clone()}
    later["x"][:, :, 16:] += 1.0
    later["mu"][:, :, 16:] -= 1.0
    out = est(**later)
    assert (out[:, :, :16] - base[:, :, :16]).abs().max() == 0  # chunks 0 and 1 never see chunk 2
    assert (out[:, :, 16:] - base[:, :, 16:]).abs().max() > 1e-3
    # Inside a chunk attention looks ahead: frame 8 (first of chunk 1) sees frame 15 (its last).
    ahead = {**inp, "x": inp["x"].clone()}
    ahead["x"][:, :, 15] += 1.0
    assert (est(**ahead)[:, :, 8] - base[:, :, 8]).abs().max() > 1e-4


@torch.no_grad()
def test_estimator_padding_gives_zero_velocity_and_leaves_real_frames_alone(tiny_cfg: ModelConfig) -> None:
    cfg = _chunked(tiny_cfg, 8)
    est = _estimator(cfg)
    inp = {k: torch.from_numpy(v) for k, v in flow_estimator_example_inputs(cfg, 28, seed=4).items()}
    v = est(**inp)
    real = int(inp["mask"][1].sum())
    assert real == 21 and v[1, :, real:].abs().max() == 0
    alone = est(inp["x"][1:, :, :real], inp["mu"][1:, :, :real], inp["t"][1:], inp["mask"][1:, :, :real])
    assert (v[1:, :, :real] - alone).abs().max() < 1e-5


def test_cosine_t_span() -> None:
    ts = cosine_t_span(10)
    assert ts.dtype == np.float32 and ts.shape == (11,)
    assert ts[0] == 0 and abs(ts[-1] - 1) < 1e-7
    assert abs(ts[1] - (1 - np.cos(np.pi / 20))) < 1e-7
    assert abs(ts[5] - (1 - np.sqrt(0.5))) < 1e-7
    assert np.all(np.diff(ts) > 0) and np.all(np.diff(ts, 2) > 0)  # steps grow towards t = 1


def test_euler_decay_matches_hand_computation() -> None:
    """v = -x for both halves: x_{k+1} = (1 - dt_k) x_k, whatever the guidance."""
    ts = cosine_t_span(4).astype(np.float64)
    z = np.array([[1.0, -2.0]], dtype=np.float32)
    x = euler_cfg_solve(lambda x, mu, t, m: (-x, -x), z, None, None, 4, cfg_rate=0.7)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, z * np.prod(1 - np.diff(ts)), rtol=1e-6)


def test_cfg_combination_and_time_points() -> None:
    """Constant velocities integrate over a total time of 1: x = z + (1 + c) a - c b."""
    seen = []

    def est(x: np.ndarray, mu: np.ndarray, t: float, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(t)
        return np.full_like(x, 3.0), np.full_like(x, -1.0)

    z = np.zeros((1, 2, 3), dtype=np.float32)
    x = euler_cfg_solve(est, z, z, z[:, :1], 5, cfg_rate=0.7)
    np.testing.assert_allclose(x, 1.7 * 3.0 - 0.7 * -1.0, rtol=1e-6)
    np.testing.assert_allclose(seen, cosine_t_span(5)[:-1], rtol=0, atol=1e-7)


def test_solver_runs_the_same_on_numpy_and_torch() -> None:
    """A linear estimator v(x | mu) = mu - x t, written once, run on both array types."""

    def est(x: Any, mu: Any, t: float, mask: Any) -> tuple[Any, Any]:
        return (mu - x * t) * mask, (-x * t) * mask

    rng = np.random.default_rng(0)
    z, mu = (rng.standard_normal((2, 4, 6)).astype(np.float32) for _ in range(2))
    mask = np.ones((2, 1, 6), dtype=np.float32)
    mask[1, :, 4:] = 0
    a = euler_cfg_solve(est, z, mu, mask, 10, 0.7)
    b = euler_cfg_solve(est, *(torch.from_numpy(v) for v in (z, mu, mask)), 10, 0.7)
    assert b.dtype == torch.float32
    np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a[1, :, 4:], z[1, :, 4:])


@torch.no_grad()
def test_torch_cfg_adapter_is_one_batch_and_padded_mel_keeps_noise(tiny_cfg: ModelConfig) -> None:
    est, prenet = _estimator(tiny_cfg), _prenet(tiny_cfg)
    inp = {k: torch.from_numpy(v) for k, v in flow_estimator_example_inputs(tiny_cfg, 12, seed=5).items()}
    v_c, v_u = torch_cfg_estimator(est)(inp["x"], inp["mu"], 0.25, inp["mask"])
    t = torch.full((2,), 0.25)
    assert (v_c - est(inp["x"], inp["mu"], t, inp["mask"])).abs().max() < 1e-5
    assert (v_u - est(inp["x"], torch.zeros_like(inp["mu"]), t, inp["mask"])).abs().max() < 1e-5

    states = torch.randn(2, 12, tiny_cfg.flow.prenet_in_dim)
    noise = torch.randn(2, tiny_cfg.flow.mel_bins, 12)
    mask = inp["mask"][:, 0]
    mel = flow_mel(prenet, est, states, noise, tiny_cfg.flow.diffusion_steps, tiny_cfg.flow.cfg_rate, mask)
    assert mel.shape == noise.shape and torch.isfinite(mel).all()
    assert torch.equal(mel[1, :, 9:], noise[1, :, 9:])
    assert (mel[:, :, :9] - noise[:, :, :9]).abs().max() > 1e-2


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelConfig, FlowPrenet, FlowEstimator, Path]:
    cfg = _chunked(get_preset("tiny"), 8)
    prenet, est = _prenet(cfg), _estimator(cfg)
    out = tmp_path_factory.mktemp("flow")
    export_flow_estimator(est, cfg, out / "flow_estimator.onnx")
    export_flow_prenet(prenet, cfg, out / "flow_prenet.onnx")
    return cfg, prenet, est, out


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("frames", [13, 41])
def test_estimator_onnx_matches_torch(exported: tuple, frames: int) -> None:
    cfg, _, est, out = exported
    sess = _session(out / "flow_estimator.onnx")
    assert [i.name for i in sess.get_inputs()] == ["x", "mu", "t", "mask"]
    assert [o.name for o in sess.get_outputs()] == ["velocity"]
    inp = flow_estimator_example_inputs(cfg, frames, seed=frames)
    got = sess.run(None, inp)[0]
    with torch.no_grad():
        want = est(**{k: torch.from_numpy(v) for k, v in inp.items()}).numpy()
    assert got.shape == (2, cfg.flow.mel_bins, frames)
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("frames", [11, 40])
def test_prenet_onnx_matches_torch_on_a_padded_batch(exported: tuple, frames: int) -> None:
    cfg, prenet, _, out = exported
    sess = _session(out / "flow_prenet.onnx")
    states = np.random.default_rng(frames).standard_normal((2, frames, cfg.flow.prenet_in_dim)).astype(np.float32)
    short = frames - 4
    states[1, short:] = 0.0  # padding
    got = sess.run(["mu"], {"states": states})[0]
    with torch.no_grad():
        want = prenet(torch.from_numpy(states)).numpy()
        alone = prenet(torch.from_numpy(states[1:, :short])).numpy()
    assert got.shape == (2, cfg.flow.mel_bins, frames)
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got[1:, :, :short] - alone).max() < 1e-4


def test_state_dict_keys_follow_the_checkpoint(tiny_cfg: ModelConfig) -> None:
    pre = FlowPrenet(tiny_cfg).state_dict()
    for key in ["in_mlp.0.weight", "in_mlp.2.bias", "final_norm.weight", "out_proj.weight",
                "transformer_layers.1.self_attn.q_proj.bias", "transformer_layers.1.self_attn.k_proj.weight",
                "transformer_layers.1.self_attn.v_proj.bias", "transformer_layers.1.self_attn.out_proj.bias",
                "transformer_layers.1.self_attn_layer_norm.weight", "transformer_layers.1.fc1.bias",
                "transformer_layers.1.fc2.weight", "transformer_layers.1.final_layer_norm.weight"]:
        assert key in pre, key
    assert "out_proj.bias" not in pre and "transformer_layers.0.self_attn.k_proj.bias" not in pre

    est = FlowEstimator(tiny_cfg).state_dict()
    c, mel = tiny_cfg.flow.channels[0], tiny_cfg.flow.mel_bins
    shapes = {
        "time_mlp.linear_1.weight": (4 * c, 2 * mel),
        "time_mlp.linear_2.weight": (4 * c, 4 * c),
        "down_blocks.0.0.block1.block.0.weight": (c, 2 * mel, 3),
        "down_blocks.0.0.block1.block.2.weight": (c,),
        "down_blocks.0.0.block2.block.0.weight": (c, c, 3),
        "down_blocks.0.0.mlp.1.weight": (c, 4 * c),
        "down_blocks.0.0.res_conv.weight": (c, 2 * mel, 1),
        "down_blocks.0.1.0.norm1.weight": (c,),
        "down_blocks.0.1.0.attn1.to_q.weight": (tiny_cfg.flow.num_heads * tiny_cfg.flow.attention_head_dim, c),
        "down_blocks.0.1.0.attn1.to_out.0.bias": (c,),
        "down_blocks.0.1.0.norm3.bias": (c,),
        "down_blocks.0.1.0.ff.net.0.proj.weight": (4 * c, c),
        "down_blocks.0.1.0.ff.net.2.weight": (c, 4 * c),
        "down_blocks.0.2.weight": (c, c, 3),
        f"mid_blocks.{tiny_cfg.flow.num_mid_blocks - 1}.1.0.attn1.to_v.weight": (c, c),
        "up_blocks.0.0.block1.block.0.weight": (c, 2 * c, 3),
        "up_blocks.0.0.res_conv.weight": (c, 2 * c, 1),
        "up_blocks.0.2.bias": (c,),
        "final_block.block.0.weight": (c, c, 3),
        "final_block.block.2.bias": (c,),
        "final_proj.weight": (mel, c, 1),
    }
    for key, shape in shapes.items():
        assert tuple(est[key].shape) == shape, key
    assert not any(k.endswith(("to_q.bias", "to_k.bias", "to_v.bias")) for k in est)
    assert not any(".norm2." in k or ".attn2." in k for k in est)


def test_solver_module_does_not_import_torch() -> None:
    code = "import sys, bcaudio.runtime.generation.flow_solver; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
