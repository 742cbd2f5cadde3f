"""Whisper log-mel frontend in torch, exportable to ONNX (spec §1, §16).

The reference zero-pads every chunk to 30 s, runs a centered (reflect-padded)
STFT over all of it, drops the last frame, takes the log-mel, normalises by the
maximum over the *whole padded* spectrogram and keeps ``min(3000, n // 160 + 1)``
frames. Computing 3000 frames for a 2 s clip is wasted work, and it is exactly
avoidable: a frame whose window holds no real sample is all zeros, its mel
energy is 0, and ``log10(max(0, 1e-10)) = -10`` is the floor, which can never
exceed the maximum of the other frames. So only the frames whose window reaches
a real sample (``frames_with_signal``) are computed; the maximum over them is the
reference maximum, and the kept frames are a prefix of them.

The STFT is a strided ``conv1d`` with a fixed windowed-DFT basis rather than
``torch.stft``: with ``return_complex=True`` the TorchScript exporter refuses it
("STFT does not currently support complex types"), and ``return_complex=False``
(which does map to ONNX ``STFT`` at opset 17) is deprecated in torch. A Conv op
runs on every execution provider and in fp32 stays within 1.6e-5 of transformers'
float64-FFT features after the log (tests/test_audio_tokenizer.py). A graph
quantizer must leave this Conv in fp32: int8 DFT weights would wreck the spectrum.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bcaudio.config import FrontendConfig
from bcaudio.runtime.audio.whisper_features import DYNAMIC_RANGE, LOG_FLOOR, slaney_filter_bank


def slaney_mel_filters(cfg: FrontendConfig) -> np.ndarray:
    """(n_fft // 2 + 1, num_mel_bins) triangular filters, Slaney scale and area norm, float64.

    Built in the runtime's numpy features module rather than imported, so the runtime needs no
    transformers; the test checks it against ``transformers.audio_utils.mel_filter_bank``.
    """
    return slaney_filter_bank(cfg.n_fft, cfg.sampling_rate, cfg.num_mel_bins, cfg.fmin, cfg.fmax)


def dft_basis(n_fft: int) -> np.ndarray:
    """(2 * (n_fft // 2 + 1), 1, n_fft) conv weights: periodic-Hann-windowed cos rows, then -sin rows."""
    t = np.arange(n_fft, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * t / n_fft)  # periodic Hann, as torch.hann_window
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)[:, None]
    phase = 2.0 * np.pi * k * t[None, :] / n_fft
    basis = np.concatenate([np.cos(phase) * window, -np.sin(phase) * window], axis=0)
    return basis[:, None, :]


def frames_with_signal(samples: int, cfg: FrontendConfig) -> int:
    """Frames whose centered window reaches a real sample; every later frame is all zeros.

    Frame f covers padded-chunk samples [f * hop - n_fft/2, f * hop + n_fft/2), so it reaches a
    real sample iff f * hop - n_fft/2 <= samples - 1.
    """
    return min(cfg.max_frames, (samples - 1 + cfg.n_fft // 2) // cfg.hop_length + 1)


def _clamp_max(value: int | torch.Tensor, bound: int) -> int | torch.Tensor:
    """min() that stays symbolic while tracing: there a shape entry is a 0-d tensor, not an int."""
    return torch.clamp(value, max=bound) if isinstance(value, torch.Tensor) else min(value, bound)


class LogMel(nn.Module):
    """(B, samples) 16 kHz float32 -> (B, num_mel_bins, kept_frames) normalised log-mel, one chunk per row."""

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Derived from the config, never loaded: kept out of state_dict.
        self.register_buffer("basis", torch.from_numpy(dft_basis(cfg.n_fft)).float(), persistent=False)
        self.register_buffer("mel_filters", torch.from_numpy(slaney_mel_filters(cfg).T.copy()).float(),
                             persistent=False)

    def mel_power(self, centered: torch.Tensor) -> torch.Tensor:
        """Mel energies of every full window of an already reflect-padded signal (B, L) -> (B, mels, frames)."""
        spec = F.conv1d(centered.unsqueeze(1), self.basis, stride=self.cfg.hop_length)
        n_freqs = self.cfg.n_fft // 2 + 1
        power = spec[:, :n_freqs].pow(2) + spec[:, n_freqs:].pow(2)
        return torch.matmul(self.mel_filters, power)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        half, hop, chunk = cfg.n_fft // 2, cfg.hop_length, cfg.chunk_samples
        x = waveform[:, :chunk]
        n = x.shape[-1]
        computed = _clamp_max((n - 1 + half) // hop + 1, cfg.max_frames)  # frames_with_signal, traceable
        kept = _clamp_max(n // hop + 1, cfg.max_frames)  # kept_frames, traceable
        # Zero-pad to 30 s (an O(samples) copy, no FFT work), reflect as torch.stft(center=True) does, then
        # cut the signal right after the last window that reaches a real sample.
        padded = F.pad(x, (0, chunk - n))
        centered = F.pad(padded.unsqueeze(1), (half, half), mode="reflect")[:, 0]  # squeeze() would export an If
        centered = centered[:, : (computed - 1) * hop + cfg.n_fft]
        log_spec = torch.log10(torch.clamp(self.mel_power(centered), min=LOG_FLOOR))
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - DYNAMIC_RANGE)
        return (log_spec[:, :, :kept] + 4.0) / 4.0
