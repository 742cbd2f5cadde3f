"""Torch glue of the flow decoder: pre-net, then the shared Euler/CFG solver over the torch estimator."""

from __future__ import annotations

import torch

from bcaudio.export.flow_estimator import FlowEstimator
from bcaudio.export.flow_prenet import FlowPrenet
from bcaudio.runtime.generation.flow_solver import CfgEstimator, euler_cfg_solve


def torch_cfg_estimator(estimator: FlowEstimator) -> CfgEstimator:
    """The conditional and unconditional velocities as one batch of 2B, as the reference evaluates them."""

    def call(x: torch.Tensor, mu: torch.Tensor, t: float, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        v = estimator(torch.cat([x, x]), torch.cat([mu, torch.zeros_like(mu)]),
                      torch.full((2 * b,), t, dtype=x.dtype, device=x.device), torch.cat([mask, mask]))
        return v[:b], v[b:]

    return call


@torch.no_grad()
def flow_mel(prenet: FlowPrenet, estimator: FlowEstimator, states: torch.Tensor, noise: torch.Tensor, steps: int,
             cfg_rate: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """states (B, T, C), noise (B, mel, T), mask (B, T) of 1 = real frame -> mel (B, mel, T).

    Padded frames of the result hold the noise unchanged (spec §16); callers cut them off.
    """
    mu = prenet(states, mask)
    frame_mask = torch.ones_like(mu[:, :1]) if mask is None else mask.unsqueeze(1).to(mu.dtype)
    return euler_cfg_solve(torch_cfg_estimator(estimator), noise.to(mu.dtype), mu, frame_mask, steps, cfg_rate)
