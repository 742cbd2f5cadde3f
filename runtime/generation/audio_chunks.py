"""How audio is cut and how many codes a chunk gives (spec §1-3), shared by the reference and the runtime."""

from __future__ import annotations

import numpy as np

from bcaudio.config import FrontendConfig, ModelConfig


def kept_frames(samples: int, cfg: FrontendConfig) -> int:
    """Mel frames the reference keeps for a chunk of ``samples`` (100 Hz, at most 30 s)."""
    return min(cfg.max_frames, samples // cfg.hop_length + 1)


def token_frames(samples: int, cfg: ModelConfig) -> int:
    """Codes the tokenizer writes for one chunk of ``samples`` (1 s -> 101 mel -> 51 encoder -> 12)."""
    encoder = (kept_frames(samples, cfg.frontend) - 1) // cfg.encoder.stride + 1
    return encoder // cfg.bridge.avg_pooler


def chunk_audio(audio: np.ndarray, cfg: FrontendConfig) -> list[np.ndarray]:
    """Cut mono audio into consecutive 30 s chunks, no overlap (spec §1); each is tokenized on its own.

    A tail shorter than one FFT window is dropped as the reference does (it yields no token).
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    size = cfg.chunk_samples
    if audio.size <= size:
        return [audio]
    return [audio[s:s + size] for s in range(0, audio.size, size) if audio.size - s >= cfg.n_fft]
