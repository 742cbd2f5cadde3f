"""Reading and writing audio files: any rate, mono or stereo in; clear errors, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class AudioInputError(ValueError):
    """Audio that cannot be used as it is; the message says what to do."""


def load_audio(path: str | Path, rate: int) -> np.ndarray:
    """Mono float32 at ``rate``: channels averaged, resampled with soxr (spec §1: no loudness normalisation)."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioInputError(f"{path}: no such file")
    try:
        audio, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioInputError(f"{path}: unreadable audio ({exc}); convert it to WAV or FLAC") from None
    return to_mono_rate(audio, file_rate, rate, str(path))


def to_mono_rate(audio: np.ndarray, source_rate: int, rate: int, what: str = "audio") -> np.ndarray:
    """(samples,) or (samples, channels) at ``source_rate`` -> mono float32 at ``rate``."""
    import soxr

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.size == 0:
        raise AudioInputError(f"{what}: empty audio; record or pass at least a short utterance")
    if not np.isfinite(audio).all():
        raise AudioInputError(f"{what}: audio contains NaN or infinity; check the recording")
    if source_rate <= 0:
        raise AudioInputError(f"{what}: invalid sample rate {source_rate}")
    if source_rate != rate:
        audio = soxr.resample(audio, source_rate, rate, quality="HQ").astype(np.float32)
    return audio


def save_audio(path: str | Path, audio: np.ndarray, rate: int) -> None:
    import soundfile as sf

    sf.write(str(path), np.asarray(audio, dtype=np.float32), rate, subtype="PCM_16")
