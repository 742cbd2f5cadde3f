"""STFT and inverse STFT as convolutions with fixed DFT bases, because ONNX has no inverse STFT op.

Both follow ``torch.stft`` / ``torch.istft`` with ``center=True``, a periodic Hann
window of length ``n_fft`` and a onesided spectrum, so a module written with them
matches one written with the torch ops (spec §11). The bases are computed in
float64 and stored as non-persistent buffers: they are constants, not weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def hann_window(n: int) -> torch.Tensor:
    """Periodic Hann window in float64 (``scipy.signal.get_window("hann", n, fftbins=True)``)."""
    return 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(n, dtype=torch.float64) / n)


def _angles(n_fft: int) -> torch.Tensor:
    """(bins, n_fft) phase 2*pi*k*n/N of every onesided bin k at every frame sample n."""
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    n = torch.arange(n_fft, dtype=torch.float64)[None, :]
    return 2 * math.pi * k * n / n_fft


class STFT(nn.Module):
    """(B, L) -> real, imag (B, n_fft // 2 + 1, L // hop + 1), as ``torch.stft(center=True, pad_mode="reflect")``."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        window = hann_window(n_fft)
        angles = _angles(n_fft)
        basis = torch.cat([window * torch.cos(angles), -window * torch.sin(angles)])  # X[k] = sum x w e^{-i a}
        self.register_buffer("basis", basis[:, None, :].float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """-> (B, 2 * bins, frames): real parts, then imaginary parts (HiFT's source layout)."""
        pad = self.n_fft // 2
        x = F.pad(x[:, None, :], (pad, pad), mode="reflect")
        return F.conv1d(x, self.basis, stride=self.hop)


class ISTFT(nn.Module):
    """real, imag (B, n_fft // 2 + 1, frames) -> (B, (frames - 1) * hop), as ``torch.istft(center=True)``.

    Each frame is an inverse real DFT times the window (one transposed convolution
    does both and the overlap-add); dividing by the overlap-added squared window
    and trimming ``n_fft // 2`` samples each side undoes the forward transform.
    """

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        window = hann_window(n_fft)
        angles = _angles(n_fft)
        # Onesided inverse: the bins other than DC and Nyquist stand for their mirror image too;
        # the imaginary parts of DC and Nyquist drop out (sin is 0 there for even n_fft), as in irfft.
        weight = torch.full((n_fft // 2 + 1, 1), 2.0, dtype=torch.float64)
        weight[0] = 1.0
        if n_fft % 2 == 0:
            weight[-1] = 1.0
        basis = torch.cat([weight * torch.cos(angles), -weight * torch.sin(angles)]) * window / n_fft
        self.register_buffer("basis", basis[:, None, :].float(), persistent=False)
        self.register_buffer("window_sq", (window**2)[None, None, :].float(), persistent=False)

    def forward(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        frames = F.conv_transpose1d(torch.cat([real, imag], dim=1), self.basis, stride=self.hop)
        # The envelope depends only on the frame count: computed from ones so the graph keeps frames dynamic.
        envelope = F.conv_transpose1d(torch.ones_like(real[:1, :1, :]), self.window_sq, stride=self.hop)
        pad = self.n_fft // 2
        return (frames / envelope)[:, 0, pad:-pad]
