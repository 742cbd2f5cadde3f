"""Seeded noise for the flow solver and the vocoder's source, drawn the same way by every backend.

Noise is a graph input (spec §10, §11); drawing it here, in numpy, from one
seed and a per-segment counter lets the torch reference and the ONNX runtime
decode the same codes to the same waveform.
"""

from __future__ import annotations

import numpy as np

from bcaudio.config import ModelConfig
from bcaudio.runtime.vocoder_noise import source_noise


class NoiseSource:
    def __init__(self, cfg: ModelConfig, seed: int) -> None:
        self.cfg, self.seed, self.segment = cfg, seed, 0

    def next_segment(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (flow z (1, mel, frames), vocoder source noise) for the next segment."""
        rng = np.random.default_rng((self.seed, self.segment))
        z = rng.standard_normal((1, self.cfg.flow.mel_bins, frames)).astype(np.float32)
        noise = source_noise(self.cfg.vocoder, 1, frames, seed=int(rng.integers(2**31)))
        self.segment += 1
        return z, noise
