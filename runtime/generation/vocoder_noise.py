"""The HiFT vocoder's random source input, drawn in numpy.

The real HiFT draws its source's additive noise inside ``forward``; here it is a graph
input (spec §11), and this torch-free module is the one place that draws it, so the
torch reference and the ONNX runtime fed the same seed produce the same waveform.
(SineGen2's random initial phase is not an input: its frame-rate resampling discards it.)
"""

from __future__ import annotations

import numpy as np

from bcaudio.config import VocoderConfig


def source_noise(cfg: VocoderConfig, batch: int, frames: int, seed: int) -> np.ndarray:
    """Standard normal (batch, nb_harmonics + 1, frames * samples_per_frame) float32; the vocoder
    scales it by the voiced / unvoiced noise amplitude."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, cfg.nb_harmonics + 1, frames * cfg.samples_per_frame)).astype(np.float32)
