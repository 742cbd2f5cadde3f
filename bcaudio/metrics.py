"""Error metrics shared by validation (fp32 vs torch) and quantization reports (quantized vs fp32)."""

from __future__ import annotations

import math

import numpy as np


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / ||want||, in float64."""
    want64 = np.asarray(want, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - want64) / max(np.linalg.norm(want64), 1e-30))


def max_abs(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max(initial=0.0))


def snr_db(got: np.ndarray, want: np.ndarray) -> float:
    """Signal-to-noise ratio of ``got`` against ``want``; infinite when they are equal."""
    want64 = np.asarray(want, np.float64)
    noise = float(np.sum((np.asarray(got, np.float64) - want64) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(want64**2)) / noise)
