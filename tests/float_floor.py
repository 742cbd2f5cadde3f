"""The float32 floor of a waveform comparison, for tests only: how far the torch reference's own waveform moves
when the mel reaching its vocoder moves by a few float32 steps, as another summation order of the flow solve
moves it.

Why a floor and not a fixed tolerance: the vocoder's source integrates the predicted f0 into a phase, so a
mel difference at the float32 rounding level (torch's and onnxruntime's flow solves differ by about 5 steps of
the largest mel value) moves f0 by ~3e-6 Hz and every later sample's phase with it, and a random vocoder
amplifies that. A bound of MARGIN x this floor follows the rounding the comparison cannot avoid and nothing
more. Measured on tiny seed 1 (tests/test_waveform_parity.py, 3 segments): ONNX vs torch is 1.4-1.9x the
floor (the flow's difference is ~5 steps, the nudge 4); an f0 one float32 step off (what an fp32 F0
predictor gives) is 56-125x.
"""

from __future__ import annotations

import torch
from torch import nn

MEL_ULPS = 4.0
MARGIN = 3.0


class NudgedMel(nn.Module):
    """The vocoder with its mel scaled by 1 + ``ulps`` * 2^-24: each value moved by about ``ulps`` float32 steps,
    all the same way (random signs mostly cancel in the F0 predictor's sums: measured 2e-6 vs 1.6e-5 for the
    same 4 steps)."""

    def __init__(self, vocoder: nn.Module, ulps: float = MEL_ULPS) -> None:
        super().__init__()
        self.vocoder, self.ulps = vocoder, ulps

    def forward(self, mel: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vocoder(mel * (1 + self.ulps * 2.0**-24), *rest)


def nudged(ref) -> nn.Module:
    """Swap ``ref``'s vocoder for its NudgedMel; -> the original (put it back with ``ref.parts["vocoder"] = it``)."""
    original = ref.parts["vocoder"]
    ref.parts["vocoder"] = NudgedMel(original)
    return original


def f0_one_step_up(vocoder: nn.Module) -> None:
    """The negative control: the F0 predictor's bias one float32 step higher (f0 up by ~1.5e-5 Hz at 140 Hz)."""
    bias = vocoder.f0_predictor.classifier.bias
    with torch.no_grad():
        bias.copy_(torch.nextafter(bias, torch.full_like(bias, float("inf"))))
