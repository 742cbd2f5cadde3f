"""Where the torch and ONNX waveforms of one decoded segment part: README's vocoder rounding table.

A random tiny checkpoint (seed 1) and its package; one segment of random codes decoded with the package's
flow and with torch's, then either vocoder run on either mel, and the torch vocoder on its own mel nudged
(float32 steps, an f0 one step up). Every row is the largest sample difference from the torch reference.
With ``--scaled`` the vocoder's ``conv_post`` log-magnitudes are halved and lowered by log 64, as in
tests/test_waveform_parity.py, so no sample sits on the clamp (the torch vocoder only: that run needs no
second package).

    python tools/vocoder_rounding.py --workdir DIR [--scaled] [--codes 40]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from bcaudio.export.checkpoint import init_checkpoint, load_checkpoint
from bcaudio.export.flow_reference import flow_mel
from bcaudio.export.package import export_package
from bcaudio.presets import get_preset
from bcaudio.runtime.generation.flow_solver import euler_cfg_solve, onnx_cfg_pair
from bcaudio.runtime.generation.noise import NoiseSource
from bcaudio.runtime.package.sessions import PackageSessions

VOCODER_ARGS = ("mel", "noise", "harmonic_phase", "start_phase", "start_frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="where the tiny checkpoint and package go")
    parser.add_argument("--scaled", action="store_true", help="conv_post scaled so no sample is clamped")
    parser.add_argument("--codes", type=int, default=40, help="codes in the segment")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt, pkg = args.workdir / "ckpt", args.workdir / "pkg"
    if not (pkg / "manifest.json").is_file():
        init_checkpoint(get_preset("tiny"), ckpt, seed=1)
        export_package(ckpt, pkg, progress=lambda _: None)
    ref, sessions = load_checkpoint(ckpt), PackageSessions(pkg)
    cfg, vocoder = ref.cfg, ref.vocoder
    if args.scaled:
        bins = cfg.vocoder.istft_n_fft // 2 + 1
        with torch.no_grad():
            vocoder.conv_post.weight_g[:bins] *= 0.5
            vocoder.conv_post.bias[:bins] = 0.5 * vocoder.conv_post.bias[:bins] - math.log(64)
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, n, args.codes) for n in cfg.bridge.codebook_sizes], 1)
    noise = NoiseSource(cfg, 0)
    z, source = noise.window(0, 0, len(codes))
    (mu,) = sessions.run("flow_prenet", {"codes": codes[None]})
    mask = np.ones((1, 1, mu.shape[-1]), np.float32)
    estimator = onnx_cfg_pair(lambda feeds: sessions.run("flow_estimator", feeds)[0])
    mel_onnx = euler_cfg_solve(estimator, z, mu, mask, cfg.flow.diffusion_steps, cfg.flow.cfg_rate)
    with torch.no_grad():
        states = ref.detokenizer(torch.as_tensor(codes)[None], ref.bridge)
        mel_torch = flow_mel(ref.prenet, ref.estimator, states, torch.as_tensor(z), cfg.flow.diffusion_steps,
                             cfg.flow.cfg_rate).numpy()
    harmonics = cfg.vocoder.nb_harmonics + 1

    def feeds(mel: np.ndarray) -> dict[str, np.ndarray]:
        return {"mel": mel.astype(np.float32), "noise": source, "harmonic_phase": noise.phases(0),
                "start_phase": np.zeros((1, harmonics), np.float32), "start_frame": np.zeros(1, np.int64)}

    def torch_vocoder(mel: np.ndarray, f0: np.ndarray | None = None) -> np.ndarray:
        forward = vocoder.f0_predictor.forward
        if f0 is not None:
            vocoder.f0_predictor.forward = lambda _: torch.from_numpy(f0)
        with torch.no_grad():
            wave = vocoder(*(torch.from_numpy(feeds(mel)[k]) for k in VOCODER_ARGS))[0].numpy()
        vocoder.f0_predictor.forward = forward
        return wave

    def f0_of(mel: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return vocoder.f0_predictor(torch.from_numpy(mel.astype(np.float32))).numpy()

    want = torch_vocoder(mel_torch)
    step = np.spacing(np.float32(f0_of(mel_torch).max()))
    signs = rng.choice([-1.0, 1.0], mel_torch.shape)
    rows = {
        "torch vocoder fed onnxruntime's mel": torch_vocoder(mel_onnx),
        "torch vocoder, only its f0 taken from onnxruntime's mel": torch_vocoder(mel_torch, f0_of(mel_onnx)),
        "torch vocoder, mel +-1 float32 step (random signs)": torch_vocoder(mel_torch + signs * np.spacing(mel_torch)),
        "torch vocoder, mel x (1 + 4 * 2^-24) (the float32 floor)": torch_vocoder(mel_torch * (1 + 4 * 2.0**-24)),
        "torch vocoder, f0 + one float32 step": torch_vocoder(mel_torch, f0_of(mel_torch) + step),
    }
    if not args.scaled:
        rows["onnxruntime flow + onnxruntime vocoder"] = sessions.run("vocoder", feeds(mel_onnx))[0]
        rows["onnxruntime vocoder fed torch's mel"] = sessions.run("vocoder", feeds(mel_torch))[0]
    steps = np.abs(mel_onnx - mel_torch).max() / np.spacing(np.float32(np.abs(mel_torch).max()))
    print(f"mel torch vs onnxruntime: {np.abs(mel_onnx - mel_torch).max():.2e} ({steps:.1f} float32 steps of the "
          f"largest value); f0 moved by it {np.abs(f0_of(mel_onnx) - f0_of(mel_torch)).max():.1e} Hz")
    print(f"peak {np.abs(want).max():.2f}, on the clamp {(np.abs(want) >= cfg.vocoder.audio_limit).mean():.0%}")
    for name, wave in rows.items():
        print(f"| {name} | {np.abs(wave - want).max():.2e} |")


if __name__ == "__main__":
    main()
