"""Export of the flow decoder's two graphs: the pre-net and one estimator call; the solver stays in Python.

I/O contract (B batch, T frames at 50 Hz, both dynamic; all float32):

flow_prenet
  states    (B, T, prenet_in_dim)  detokenizer states (right-padded in a batch)
  mu        (B, mel_bins, T)       causal: padded frames never reach real ones
flow_estimator
  x         (B, mel_bins, T)       current point of the flow
  mu        (B, mel_bins, T)       condition (zeros for the unconditional half of CFG)
  t         (B,)                   flow time in [0, 1]
  mask      (B, 1, T)              1 = real frame, 0 = padding
  velocity  (B, mel_bins, T)       zero on padded frames

The estimator graph is run once per Euler step with the CFG pair as batch 2B, so
noise and the step schedule never enter a graph (spec §10). TorchScript export
(``export_module``) is used: it is several times faster than dynamo here and
keeps the dynamic_axes names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bcaudio.config import ModelConfig
from bcaudio.export.flow_estimator import FlowEstimator
from bcaudio.export.flow_prenet import FlowPrenet
from bcaudio.export.onnx_io import export_module

ESTIMATOR_INPUTS = ["x", "mu", "t", "mask"]
ESTIMATOR_OUTPUTS = ["velocity"]
PRENET_INPUTS = ["states"]
PRENET_OUTPUTS = ["mu"]


def flow_estimator_example_inputs(cfg: ModelConfig, frames: int, seed: int, batch: int = 2) -> dict[str, np.ndarray]:
    """Random estimator inputs; item 1 (when batch > 1) is right-padded by a quarter so masks are exercised."""
    rng = np.random.default_rng(seed)
    mel = cfg.flow.mel_bins
    mask = np.ones((batch, 1, frames), dtype=np.float32)
    if batch > 1:
        mask[1, :, frames - frames // 4:] = 0.0
    return {
        "x": rng.standard_normal((batch, mel, frames)).astype(np.float32),
        "mu": rng.standard_normal((batch, mel, frames)).astype(np.float32),
        "t": rng.uniform(0.0, 1.0, batch).astype(np.float32),
        "mask": mask,
    }


def export_flow_estimator(module: FlowEstimator, cfg: ModelConfig, path: Path, opset: int = 17) -> list[Path]:
    """Trace at batch 2 and more than one attention chunk, so neither is baked in as a constant."""
    frames = max(2 * cfg.flow.static_chunk_size + 3, 16)
    args = [torch.from_numpy(v) for v in flow_estimator_example_inputs(cfg, frames, seed=0).values()]
    axes = {"x": {0: "batch", 2: "frames"}, "mu": {0: "batch", 2: "frames"}, "t": {0: "batch"},
            "mask": {0: "batch", 2: "frames"}, "velocity": {0: "batch", 2: "frames"}}
    return export_module(module, args, Path(path), ESTIMATOR_INPUTS, ESTIMATOR_OUTPUTS, axes, opset)


def export_flow_prenet(module: FlowPrenet, cfg: ModelConfig, path: Path, opset: int = 17) -> list[Path]:
    """Standalone graph of the pre-net; no mask input, since causality keeps padding out of real frames."""
    states = torch.randn(2, 16, cfg.flow.prenet_in_dim, generator=torch.Generator().manual_seed(0))
    axes = {"states": {0: "batch", 1: "frames"}, "mu": {0: "batch", 2: "frames"}}
    return export_module(module, [states], Path(path), PRENET_INPUTS, PRENET_OUTPUTS, axes, opset)
