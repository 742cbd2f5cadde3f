"""Export of the HiFT vocoder as one graph.

I/O contract (B batch, T mel frames at 50 Hz, S = T * samples_per_frame; all float32, B, T, S dynamic):

  mel       (B, num_mels, T)               log-mel from the flow decoder
  noise     (B, nb_harmonics + 1, S)       standard normal, drawn by runtime.vocoder_noise.source_noise
  waveform  (B, S)                         24 kHz, clamped to +-audio_limit

TorchScript export (``export_module``, ``dynamo=False``): it is many times faster
to export than dynamo, keeps the dynamic_axes names, and the graph has no
data-dependent shapes that would need dynamo. Weight norm stays in the graph as
a few ops per conv on constants; constant folding turns it into plain weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bcaudio.config import ModelConfig
from bcaudio.export.onnx_io import export_module
from bcaudio.export.vocoder import HiFTVocoder
from bcaudio.runtime.generation.vocoder_noise import source_noise

VOCODER_INPUTS = ["mel", "noise"]
VOCODER_OUTPUTS = ["waveform"]


def vocoder_example_inputs(cfg: ModelConfig, frames: int, seed: int, batch: int = 2) -> dict[str, np.ndarray]:
    """Random inputs; the mel sits in a log-mel-like range so a real F0 predictor sees voiced and unvoiced frames."""
    rng = np.random.default_rng(seed)
    mel = rng.normal(-5.0, 2.0, (batch, cfg.vocoder.num_mels, frames)).astype(np.float32)
    return {"mel": mel, "noise": source_noise(cfg.vocoder, batch, frames, seed=int(rng.integers(2**31)))}


def export_vocoder(module: HiFTVocoder, cfg: ModelConfig, path: Path, opset: int = 17) -> list[Path]:
    """Trace at batch 2 and more than one frame, so neither is baked in as a constant."""
    args = [torch.from_numpy(v) for v in vocoder_example_inputs(cfg, frames=8, seed=0).values()]
    axes = {"mel": {0: "batch", 2: "frames"}, "noise": {0: "batch", 2: "samples"},
            "waveform": {0: "batch", 1: "samples"}}
    return export_module(module, args, Path(path), VOCODER_INPUTS, VOCODER_OUTPUTS, axes, opset)
