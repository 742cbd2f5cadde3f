"""The HiFT vocoder's random source inputs, drawn in numpy.

The published HiFT draws its sine source's random harmonic phases and additive noise inside
``forward``; here both are graph inputs (spec §11), and this torch-free module is the one place
that draws them, so the torch reference and the ONNX runtime fed the same seed produce the
same waveform.
"""

from __future__ import annotations

import numpy as np

from bcaudio.config import VocoderConfig


def source_noise(cfg: VocoderConfig, batch: int, frames: int, seed: int) -> np.ndarray:
    """Standard normal (batch, nb_harmonics + 1, frames * samples_per_frame) float32; the vocoder
    scales it by the voiced / unvoiced noise amplitude."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, cfg.nb_harmonics + 1, frames * cfg.samples_per_frame)).astype(np.float32)


def harmonic_phases(cfg: VocoderConfig, batch: int, seed: int | np.random.SeedSequence) -> np.ndarray:
    """(batch, nb_harmonics + 1) float32 radians: 0 for the fundamental, uniform in [-pi, pi) for each
    overtone, as the published generator draws them once per call (once per segment here)."""
    rng = np.random.default_rng(seed)
    phases = rng.uniform(-np.pi, np.pi, (batch, cfg.nb_harmonics + 1))
    phases[:, 0] = 0.0
    return phases.astype(np.float32)
