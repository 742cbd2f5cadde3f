"""Export of codes -> mu: detokenizer (codebook sum, projection, transposed conv, causal layers) and pre-net.

I/O contract: input ``codes`` int64 (B, T, K) -> output ``mu`` float (B, mel_bins, 4T - 1) at 50 Hz.
Both halves are causal, so the runtime may decode a segment in chunks with left context.
The estimator step is its own graph: the solver calls it 2 x steps times per segment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.audio_tokenizer import detokenizer_example_codes
from bcaudio.export.bridge import AudioBridge
from bcaudio.export.detokenizer import AudioDetokenizer
from bcaudio.export.flow_prenet import FlowPrenet
from bcaudio.export.onnx_io import export_module


class CodesToMu(nn.Module):
    def __init__(self, bridge: AudioBridge, detokenizer: AudioDetokenizer, prenet: FlowPrenet) -> None:
        super().__init__()
        self.bridge, self.detokenizer, self.prenet = bridge, detokenizer, prenet

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.prenet(self.detokenizer(codes, self.bridge))


def codes_to_mu_example_inputs(cfg: ModelConfig, frames: int, seed: int) -> dict[str, np.ndarray]:
    return {"codes": detokenizer_example_codes(cfg, frames, seed)}


def export_codes_to_mu(bridge: AudioBridge, detokenizer: AudioDetokenizer, prenet: FlowPrenet, cfg: ModelConfig,
                       path: Path, opset: int = 17) -> list[Path]:
    codes = torch.from_numpy(codes_to_mu_example_inputs(cfg, frames=5, seed=0)["codes"])
    return export_module(CodesToMu(bridge, detokenizer, prenet), [codes], path, ["codes"], ["mu"],
                         {"codes": {0: "batch", 1: "frames"}, "mu": {0: "batch", 2: "mel_frames"}}, opset,
                         graph="flow_prenet")
