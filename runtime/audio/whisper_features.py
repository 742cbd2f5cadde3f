"""Whisper log-mel features in numpy: the input of the Smart Turn end-of-turn classifier.

The audio tokenizer computes its log-mel inside its ONNX graph (a Conv with a DFT basis, see
``bcaudio.export.frontend``), but that module is torch; the turn classifier runs on the edge box
next to the VAD, so its features are computed here with numpy's FFT. The Slaney filter bank is
shared with the export frontend, so both follow one definition (tested against transformers).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

LOG_FLOOR = 1e-10  # log10 floor of the mel energies
DYNAMIC_RANGE = 8.0  # log10 units kept below the maximum (80 dB)


def hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    logstep = 27.0 / np.log(6.4)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * logstep
    return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = 200.0 * mel / 3.0
    logstep = np.log(6.4) / 27.0
    log_part = 1000.0 * np.exp(logstep * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def slaney_filter_bank(n_fft: int, sampling_rate: int, num_mel_bins: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_fft // 2 + 1, num_mel_bins) triangular filters, Slaney scale and area norm, float64."""
    n_freqs = n_fft // 2 + 1
    fft_hz = np.linspace(0.0, sampling_rate // 2, n_freqs)
    edges_mel = np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), num_mel_bins + 2)
    edges_hz = mel_to_hz_slaney(edges_mel)
    lower, center, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    rising = (fft_hz[:, None] - lower[None, :]) / (center - lower)[None, :]
    falling = (upper[None, :] - fft_hz[:, None]) / (upper - center)[None, :]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (upper - lower))[None, :]


@lru_cache(maxsize=4)
def _bank(n_fft: int, rate: int, mels: int) -> np.ndarray:
    return slaney_filter_bank(n_fft, rate, mels, 0.0, rate / 2).T.copy()


def whisper_log_mel(audio: np.ndarray, num_mel_bins: int = 80, n_fft: int = 400, hop: int = 160,
                    rate: int = 16000, normalize: bool = True) -> np.ndarray:
    """(num_mel_bins, samples // hop) log-mel of ``audio`` exactly as WhisperFeatureExtractor makes it for a
    window of that length: optional zero-mean unit-variance waveform, centered (reflect-padded) periodic-Hann
    STFT in float64, last frame dropped, log10 floored 80 dB below the maximum, then ``(x + 4) / 4``."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if normalize:
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    half = n_fft // 2
    padded = np.pad(x.astype(np.float64), (half, half), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (frames, freqs)
    log_spec = np.log10(np.maximum(LOG_FLOOR, _bank(n_fft, rate, num_mel_bins) @ power.T))[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
