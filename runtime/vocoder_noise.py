"""The HiFT vocoder's random source inputs, drawn in numpy.

The real HiFT draws its harmonics' initial phases and the source's additive noise
inside ``forward``; here they are graph inputs (spec §11), and this torch-free
module is the one place that draws them, so the torch reference and the ONNX
runtime fed the same seed produce the same waveform.
"""

from __future__ import annotations

import numpy as np

from bcaudio.config import VocoderConfig


def source_noise(cfg: VocoderConfig, batch: int, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (phase, noise), float32, for ``frames`` mel frames.

    phase: (batch, nb_harmonics, 1), uniform on [-pi, pi): initial phases of the overtones
           (the fundamental's phase is fixed at 0 inside the vocoder, as in HiFT's SineGen).
    noise: (batch, nb_harmonics + 1, frames * samples_per_frame), standard normal; the vocoder
           scales it by the voiced / unvoiced noise amplitude.
    """
    rng = np.random.default_rng(seed)
    phase = rng.uniform(-np.pi, np.pi, (batch, cfg.nb_harmonics, 1)).astype(np.float32)
    noise = rng.standard_normal((batch, cfg.nb_harmonics + 1, frames * cfg.samples_per_frame)).astype(np.float32)
    return phase, noise
