"""Export of the HiFT vocoder as one graph.

I/O contract (B batch, T mel frames at 50 Hz, S = T * samples_per_frame, H = nb_harmonics + 1; float32
unless said; B, T, S dynamic):

  mel             (B, num_mels, T)   log-mel from the flow decoder
  noise           (B, H, S)          standard normal (runtime/generation/vocoder_noise.py: source_noise)
  harmonic_phase  (B, H)             radians, the harmonics' random phases (there: harmonic_phases)
  start_phase     (B, H)             cycles, the segment's cumulative source phase at the start of
  start_frame     (B,) int64         this window frame (0 and 0 for a whole segment; runtime/generation/source_phase.py)
  waveform        (B, S)             24 kHz, clamped to +-audio_limit
  frame_phase     (B, H, T)          cycles in [0, 1), the cumulative source phase after each frame

TorchScript export (``export_module``, ``dynamo=False``): it is many times faster
to export than dynamo, keeps the dynamic_axes names, and the graph has no
data-dependent shapes that would need dynamo. Weight norm stays in the graph as
a few ops per conv on constants; constant folding turns it into plain weights.
The source's phase arithmetic is float64 inside the graph (see ``SourceModule``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bcaudio.config import ModelConfig
from bcaudio.export.onnx_io import export_module
from bcaudio.export.vocoder import HiFTVocoder
from bcaudio.export.vocoder_stream import StreamingHiFT
from bcaudio.runtime.generation.vocoder_noise import harmonic_phases, source_noise

VOCODER_INPUTS = ["mel", "noise", "harmonic_phase", "start_phase", "start_frame"]
VOCODER_OUTPUTS = ["waveform", "frame_phase"]


def vocoder_example_inputs(cfg: ModelConfig, frames: int, seed: int, batch: int = 2) -> dict[str, np.ndarray]:
    """Random inputs; the mel sits in a log-mel-like range so a real F0 predictor sees voiced and unvoiced
    frames, and the phase is taken up at a frame inside the window with a phase other than 0."""
    rng = np.random.default_rng(seed)
    mel = rng.normal(-5.0, 2.0, (batch, cfg.vocoder.num_mels, frames)).astype(np.float32)
    harmonics = cfg.vocoder.nb_harmonics + 1
    return {"mel": mel, "noise": source_noise(cfg.vocoder, batch, frames, seed=int(rng.integers(2**31))),
            "harmonic_phase": harmonic_phases(cfg.vocoder, batch, seed=int(rng.integers(2**31))),
            "start_phase": rng.uniform(0.0, 1.0, (batch, harmonics)).astype(np.float32),
            "start_frame": rng.integers(0, frames, batch).astype(np.int64)}


def vocoder_args(feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
    """The feeds as the torch module's positional arguments."""
    return [torch.from_numpy(feeds[name]) for name in VOCODER_INPUTS]


def export_vocoder(module: HiFTVocoder, cfg: ModelConfig, path: Path, opset: int = 17) -> list[Path]:
    """Trace at batch 2 and more than one frame, so neither is baked in as a constant."""
    args = vocoder_args(vocoder_example_inputs(cfg, frames=8, seed=0))
    axes = {"mel": {0: "batch", 2: "frames"}, "noise": {0: "batch", 2: "samples"}, "harmonic_phase": {0: "batch"},
            "start_phase": {0: "batch"}, "start_frame": {0: "batch"}, "waveform": {0: "batch", 1: "samples"},
            "frame_phase": {0: "batch", 2: "frames"}}
    return export_module(module, args, Path(path), VOCODER_INPUTS, VOCODER_OUTPUTS, axes, opset)


# ----- the stateful graph (export/vocoder_stream.py) -----
STREAM_INPUTS = ["mel", "noise", "harmonic_phase", "first", "final"]


def stream_state_names(count: int) -> tuple[list[str], list[str]]:
    """The state inputs and outputs in the graph's order: ``state_in.{i}`` is what ``state_out.{i}`` returned."""
    return [f"state_in.{i}" for i in range(count)], [f"state_out.{i}" for i in range(count)]


def first_stream_states(inputs: Sequence[Any], batch: int = 1) -> dict[str, np.ndarray]:
    """A segment's first states from the graph's inputs (onnxruntime's ``get_inputs()``) alone: every named
    length 0, the batch as given, float64 where the graph says double (the F0 predictor's), zeros."""
    return {i.name: np.zeros([batch if d == "batch" else 0 if isinstance(d, str) else d for d in i.shape],
                             np.float64 if i.type == "tensor(double)" else np.float32)
            for i in inputs if i.name.startswith("state_in.")}


def export_vocoder_stream(module: HiFTVocoder, cfg: ModelConfig, path: Path, opset: int = 17) -> list[Path]:
    """Traced on a middle call (states neither empty nor final) at batch 2, so no length is baked in.

    I/O contract (B batch, n mel frames in this call, H = nb_harmonics + 1; B, n, every state length dynamic):
      mel (B, num_mels, n), noise (B, H, n * samples_per_frame): this call's frames, as for ``vocoder``
      harmonic_phase (B, H): the segment's; first, final (1,) int64: 1 on the segment's first / last call
      state_in.{i}: float32 or float64 (B, C, L), empty (L = 0) on the first call; one (B, H) source phase
        (zeros on the first call) - the runtime builds them all from these input shapes
      waveform (B, m): the segment's next m samples; state_out.{i}: the next call's state_in.{i}
    A first call needs more frames than ``StreamingHiFT.lag_samples()`` is worth (vocoder_stream.py).
    """
    stream = StreamingHiFT(module).eval()
    stream.state_count()  # its dry run now, not inside the trace
    feeds = vocoder_example_inputs(cfg, frames=30, seed=0)
    torch_feeds = vocoder_args(feeds)
    samples = cfg.vocoder.samples_per_frame
    with torch.no_grad():
        one, zero = torch.tensor([1]), torch.tensor([0])
        states = stream(torch_feeds[0][..., :24], torch_feeds[1][..., :24 * samples], torch_feeds[2], one, zero)[1:]
    args = [torch_feeds[0][..., 24:], torch_feeds[1][..., 24 * samples:], torch_feeds[2], zero, zero, *states]
    ins, outs = stream_state_names(len(states))
    axes: dict[str, dict[int, str]] = {"mel": {0: "batch", 2: "frames"}, "noise": {0: "batch", 2: "samples"},
                                       "harmonic_phase": {0: "batch"}, "waveform": {0: "batch", 1: "out_samples"}}
    for i, state in enumerate(states):
        axes[ins[i]] = {0: "batch", 2: f"in_len.{i}"} if state.ndim == 3 else {0: "batch"}
        axes[outs[i]] = {0: "batch", 2: f"out_len.{i}"} if state.ndim == 3 else {0: "batch"}
    return export_module(stream, args, Path(path), STREAM_INPUTS + ins, ["waveform", *outs], axes, opset)
