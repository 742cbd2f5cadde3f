"""The fp16 vocoder against its fp32 graph at a narrow and a wide f0 range: README's fp16 vocoder table.

A preset's random vocoder as ``bcaudio init`` writes it (seed 0); narrow = its F0 head as written, wide =
the head's weight times ``--wide-gain``. Each is exported, converted by ``quantize_fp16`` with and without
``unround_io`` (the converter's own casts round the float32 I/O of the fp32-kept F0 predictor and source
through fp16), and both graphs run on onnxruntime CPU on the accuracy probe's kind of inputs (40 frames).
``--fp32-predictor`` runs the F0 predictor as it was before it went float64 (fp32 convolutions).

    python tools/fp16_vocoder_table.py --preset tiny [--wide-gain 12] [--fp32-predictor] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bcaudio.export.checkpoint import expected_shapes
from bcaudio.export.export_vocoder import export_vocoder
from bcaudio.export.random_init import random_tensor
from bcaudio.export.vocoder import F0Predictor, HiFTVocoder
from bcaudio.metrics import snr_db
from bcaudio.presets import get_preset
from bcaudio.quant import fp16
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.vocoder_noise import harmonic_phases, source_noise

FRAMES = 40


def _fp32_f0(self: F0Predictor, mel: torch.Tensor) -> torch.Tensor:
    return torch.abs(self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", help="tiny or small")
    parser.add_argument("--wide-gain", type=float, default=12.0, help="F0 head weight factor of the wide range")
    parser.add_argument("--fp32-predictor", action="store_true", help="the F0 predictor in fp32, as before")
    parser.add_argument("--workdir", type=Path, default=None, help="where the graphs go (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = get_preset(args.preset)
    if args.fp32_predictor:
        F0Predictor.forward = _fp32_f0
    rng = np.random.default_rng(0)
    feeds = {"mel": rng.normal(-5.0, 2.0, (1, cfg.vocoder.num_mels, FRAMES)).astype(np.float32),
             "noise": source_noise(cfg.vocoder, 1, FRAMES, seed=9),
             "harmonic_phase": harmonic_phases(cfg.vocoder, 1, seed=9),
             **SourcePhase(cfg.vocoder.nb_harmonics + 1).feeds(0)}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    unround = fp16.unround_io
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name, gain in (("narrow", 1.0), ("wide", args.wide_gain)):
            state = {k: random_tensor(k, s, 0) for k, s in expected_shapes(cfg, "vocoder").items()}
            state["f0_predictor.classifier.weight"] *= gain
            module = HiFTVocoder(cfg.vocoder).eval()
            module.load_state_dict(state)
            with torch.no_grad():
                f0 = module.f0_predictor(torch.from_numpy(feeds["mel"])).numpy()
            source = work / f"{name}.onnx"
            export_vocoder(module, cfg, source)
            want = ort.InferenceSession(str(source), options).run(["waveform"], feeds)[0]
            for io in ("rounded", "unrounded"):
                fp16.unround_io = unround if io == "unrounded" else (lambda model: model)
                path = work / f"{name}-{io}-fp16.onnx"
                fp16.quantize_fp16(source, path, "vocoder")
                got = ort.InferenceSession(str(path), options).run(["waveform"], feeds)[0]
                print(f"| {args.preset} | {'fp32' if args.fp32_predictor else 'float64'} predictor, I/O {io} | "
                      f"{name} {f0.min():.0f}-{f0.max():.0f} Hz | {snr_db(got, want):.1f} dB |", flush=True)
            fp16.unround_io = unround


if __name__ == "__main__":
    main()
