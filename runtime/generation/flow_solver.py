"""Euler solver of the flow decoder with classifier-free guidance (spec §10); torch-free.

The same function drives the torch reference and the ONNX runtime: it uses only
``+``, ``*`` and the caller's estimator, so ``x`` may be a numpy array or a torch
tensor. Time steps enter as Python floats, which keep the array's dtype under
both libraries' promotion rules.

The estimator is a ``CfgEstimator``: ``(x, mu, t, mask) -> (v(x | mu), v(x | 0))``.
How the pair is computed is the caller's concern; the reference (and the ONNX
estimator graph, which has a dynamic batch) runs both as one batch of 2B.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

CfgEstimator = Callable[[Any, Any, float, Any], tuple[Any, Any]]


def onnx_cfg_pair(run: Callable[[dict[str, np.ndarray]], np.ndarray]) -> CfgEstimator:
    """A CfgEstimator over an exported estimator graph: the conditional and unconditional
    passes as one batch-2 call. ``run(feeds) -> velocity`` runs the graph."""

    def estimate(x: np.ndarray, mu: np.ndarray, t: float, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = run({"x": np.concatenate([x, x]), "mu": np.concatenate([mu, np.zeros_like(mu)]),
                 "t": np.full(2, t, dtype=np.float32), "mask": np.concatenate([mask, mask])})
        return v[:1], v[1:]

    return estimate


def cosine_t_span(steps: int) -> np.ndarray:
    """(steps + 1,) float32 times from 0 to 1, dense near t = 0 where the path from noise bends most."""
    s = np.linspace(0.0, 1.0, steps + 1, dtype=np.float64)
    return (1.0 - np.cos(s * (math.pi / 2))).astype(np.float32)


def euler_cfg_solve(estimator: CfgEstimator, z: Any, mu: Any, mask: Any, steps: int, cfg_rate: float) -> Any:
    """Integrate dx/dt = (1 + cfg) v(x | mu) - cfg v(x | 0) from x = z at t = 0 to t = 1.

    ``z`` is the noise, an argument so every backend can draw the same one. Padded frames keep
    it: the estimator's velocity is zero there.
    """
    ts = [float(v) for v in cosine_t_span(steps)]
    x = z
    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        v_cond, v_uncond = estimator(x, mu, t0, mask)
        x = x + (t1 - t0) * ((1.0 + cfg_rate) * v_cond - cfg_rate * v_uncond)
    return x
