"""The audio tokenizer graph: one <= 30 s chunk of 16 kHz audio -> RVQ codes at 12.5 Hz (spec §1-4).

Frontend, encoder, bridge and quantizer run in one graph so the runtime hands over raw samples
and gets codes back; longer audio is cut with ``runtime.audio_chunks.chunk_audio`` and the chunks' codes are
concatenated. One chunk per call (batch 1) keeps every shape exact: no padding reaches the
encoder, just as the reference feeds each chunk trimmed to its real frames.

ONNX I/O: ``waveform`` float32 (1, samples) -> ``codes`` int64 (1, frames, num_codebooks), with
frames = encoder_frames(kept_frames(samples)) // avg_pooler. Below 960 samples (60 ms) that is 0
and the graph cannot run (its convolutions get an empty input): skip such a chunk, as the reference
does (its processor drops chunks with ``bridge_length <= 0``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.bridge import AudioBridge
from bcaudio.export.encoder import AudioEncoder
from bcaudio.export.frontend import LogMel
from bcaudio.export.onnx_io import export_module


class AudioTokenizer(nn.Module):
    def __init__(self, cfg: ModelConfig, encoder: AudioEncoder, bridge: AudioBridge) -> None:
        super().__init__()
        self.frontend = LogMel(cfg.frontend)
        self.encoder = encoder
        self.bridge = bridge

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform (1, samples) float32 at 16 kHz, one chunk -> codes (1, frames, num_codebooks) int64."""
        codes = self.bridge.quantize(self.bridge(self.encoder(self.frontend(waveform))))
        # A constant leading 1 (batch is 1 by contract) gives the graph output a static batch dim.
        return codes.reshape(1, -1, len(self.bridge.vq_list))


def audio_tokenizer_example_inputs(cfg: ModelConfig, seconds: float, seed: int) -> dict[str, np.ndarray]:
    """Quiet Gaussian noise as a stand-in waveform (1, samples)."""
    rng = np.random.default_rng(seed)
    samples = int(round(seconds * cfg.frontend.sampling_rate))
    return {"waveform": (0.1 * rng.standard_normal((1, samples))).astype(np.float32)}


def detokenizer_example_codes(cfg: ModelConfig, frames: int, seed: int) -> np.ndarray:
    """Random valid codes (1, frames, num_codebooks) int64, each column below its codebook's size."""
    rng = np.random.default_rng(seed)
    cols = [rng.integers(0, n, (1, frames)) for n in cfg.bridge.codebook_sizes]
    return np.stack(cols, axis=-1).astype(np.int64)


def export_audio_tokenizer(module: AudioTokenizer, cfg: ModelConfig, path: Path, opset: int = 17) -> list[Path]:
    example = audio_tokenizer_example_inputs(cfg, seconds=2.0, seed=0)
    axes = {"waveform": {1: "samples"}, "codes": {1: "frames"}}
    return export_module(module, [torch.from_numpy(example["waveform"])], path, ["waveform"], ["codes"], axes, opset)
