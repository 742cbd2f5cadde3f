"""Seeded noise for the flow solver and the vocoder's source, drawn the same way by every backend.

Noise is a graph input (spec §10, §11); drawing it here, in numpy, lets the torch reference and
the ONNX runtime decode the same codes to the same waveform. It is drawn per audio code (one
generator per seed, segment and code index), so a window of a segment (the streamed pieces of
``segment_stream``) sees exactly the noise the whole segment would have at those frames; the
source's harmonic phases are drawn once per segment (the published vocoder draws them per call,
and a call is a segment), from a child of the segment's generator that no code's generator equals.
"""

from __future__ import annotations

import numpy as np

from bcaudio.config import ModelConfig
from bcaudio.runtime.generation.vocoder_noise import harmonic_phases, source_noise


class NoiseSource:
    def __init__(self, cfg: ModelConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed

    def window(self, segment: int, first_code: int, codes: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (flow z (1, mel, F), vocoder source noise (1, harmonics + 1, F * samples per frame)) for the
        ``codes`` codes from ``first_code`` of answer segment ``segment``; F = ``cfg.decoded_frames(codes)``."""
        stride = self.cfg.bridge.avg_pooler
        z, source = [], []
        for code in range(first_code, first_code + codes):
            rng = np.random.default_rng((self.seed, segment, code))
            z.append(rng.standard_normal((1, self.cfg.flow.mel_bins, stride)).astype(np.float32))
            source.append(source_noise(self.cfg.vocoder, 1, stride, seed=int(rng.integers(2**31))))
        frames = self.cfg.decoded_frames(codes)
        samples = frames * self.cfg.vocoder.samples_per_frame
        return np.concatenate(z, axis=2)[..., :frames], np.concatenate(source, axis=2)[..., :samples]

    def phases(self, segment: int) -> np.ndarray:
        """-> the vocoder source's harmonic phases (1, harmonics + 1) for answer segment ``segment``."""
        return harmonic_phases(self.cfg.vocoder, 1, np.random.SeedSequence((self.seed, segment), spawn_key=(1,)))
