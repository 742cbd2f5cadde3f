"""Phase precision of the vocoder's NSF sine source over long segments: README's table.

The published source (spec §11) takes one fp32 cumulative sum of k * f0 / 24000 over a segment's
samples, so its rounding grows with the segment. For a voiced f0 contour (80-400 Hz, all nine
harmonics) this prints the largest phase error, in radians, over the first 1, 10 and 30 s against
the same sum in float64 (numpy, per sample), for: the published fp32 computation as torch runs it
on this CPU, a plain fp32 running sum (numpy float32 cumsum), bcaudio's torch source and its ONNX
graph on onnxruntime CPU (the source module exported as the vocoder exports it).

    python tools/source_phase_precision.py [--seconds 1,10,30]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from bcaudio.export.onnx_io import export_module
from bcaudio.export.vocoder import SourceModule
from bcaudio.presets import get_preset


class _Phase(nn.Module):
    """The source's phase (radians, float64) as a graph output."""

    def __init__(self, source: SourceModule) -> None:
        super().__init__()
        self.source = source

    def forward(self, f0: torch.Tensor, harmonic_phase: torch.Tensor, start_phase: torch.Tensor,
                start_frame: torch.Tensor) -> torch.Tensor:
        return self.source.phase(f0, harmonic_phase, start_phase, start_frame)[0]


def voiced_contour(frames: int) -> np.ndarray:
    t = np.arange(frames) / 50.0
    return (240 + 110 * np.sin(2 * np.pi * 0.21 * t) + 50 * np.sin(2 * np.pi * 1.3 * t + 1.0))[None].astype(np.float32)


def wrapped_error(theta: np.ndarray, exact: np.ndarray, samples: int) -> float:
    diff = theta[..., :samples] - exact[..., :samples]
    return float(np.abs((diff + np.pi) % (2 * np.pi) - np.pi).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", default="1,10,30", help="segment lengths to report")
    args = parser.parse_args()
    seconds = [float(s) for s in args.seconds.split(",")]
    cfg = get_preset("tiny").vocoder  # the source's arithmetic is the same at every size
    up, rate, harmonics = cfg.samples_per_frame, cfg.sampling_rate, cfg.nb_harmonics + 1
    f0 = voiced_contour(int(max(seconds) * 50))
    k = np.arange(1, harmonics + 1)[None, :, None]
    f0_up = np.repeat(f0, up, axis=-1)[:, None, :]  # nearest upsampling
    exact = 2 * np.pi * (np.cumsum(f0_up.astype(np.float64) * k / rate, axis=-1) % 1.0)
    published_t = torch.from_numpy(f0_up) * torch.arange(1, harmonics + 1, dtype=torch.float32)[None, :, None] / rate
    published = (2 * np.pi * (torch.cumsum(published_t, dim=-1) % 1)).double().numpy()
    running = (2 * np.pi * (np.cumsum(f0_up * k.astype(np.float32) / np.float32(rate), axis=-1) % 1)).astype(np.float64)
    zeros = {"harmonic_phase": np.zeros((1, harmonics), np.float32),
             "start_phase": np.zeros((1, harmonics), np.float32), "start_frame": np.zeros(1, np.int64)}
    module = _Phase(SourceModule(cfg)).eval()
    with torch.no_grad():
        ours_torch = module(torch.from_numpy(f0), *(torch.from_numpy(v) for v in zeros.values())).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phase.onnx"
        example = [torch.from_numpy(f0[:, :8]), *(torch.from_numpy(v) for v in zeros.values())]
        export_module(module, example, path, ["f0", *zeros], ["theta"], {"f0": {1: "frames"}}, 17)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (ours_onnx,) = session.run(None, {"f0": f0, **zeros})
    rows = [("published fp32 (torch CPU)", published), ("fp32 running sum (numpy)", running),
            ("bcaudio torch", ours_torch), ("bcaudio ONNX (onnxruntime CPU)", ours_onnx)]
    print("max phase error (rad) vs a float64 sum, f0 80-400 Hz, 9 harmonics\n")
    print("| computation | " + " | ".join(f"{s:g} s" for s in seconds) + " |")
    print("|---|" + "---|" * len(seconds))
    for name, theta in rows:
        print(f"| {name} | " + " | ".join(f"{wrapped_error(theta, exact, int(s * rate)):.1e}" for s in seconds) + " |")


if __name__ == "__main__":
    main()
