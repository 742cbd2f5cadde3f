"""Is a statically quantized (int8 QDQ, calibrated) vocoder faster, and how far is its audio from fp32?

The vocoder is a third of a streamed CPU turn. This quantizes its learned convolutions (the
upsampling and resblock Convs; never the STFT / iSTFT Convs with their fixed DFT bases, nor the
ConvTransposes) with onnxruntime's static quantizer: QDQ format, per-channel weights, activation
ranges calibrated on mels the package's own flow decoder makes from code windows. Then, on windows
held out of the calibration, interleaved in one process: ms per window for fp32 and int8, and the
audible error, the waveform SNR against fp32 (the README bound for a quantized vocoder: >= 30 dB).

    python tools/vocoder_int8_static.py --model PKG [--windows 8] [--codes 22] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from bcaudio.runtime.generation.flow_solver import euler_cfg_solve, onnx_cfg_pair
from bcaudio.runtime.generation.noise import NoiseSource
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.package.manifest import load_manifest


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def vocoder_inputs(pkg: Path, windows: int, codes: int, steps: int, threads: int) -> list[dict[str, np.ndarray]]:
    """The vocoder feeds of ``windows`` random code windows (mel decoded by the package's flow graphs, each
    a whole segment: its source phase starts at 0)."""
    cfg = load_manifest(pkg, verify=False).model_config()
    prenet, estimator = session(pkg / "flow_prenet.onnx", threads), session(pkg / "flow_estimator.onnx", threads)
    noise = NoiseSource(cfg, seed=0)
    rng = np.random.default_rng(0)
    sizes = np.array(cfg.bridge.codebook_sizes)
    feeds = []
    for w in range(windows):
        window = (rng.random((1, codes, sizes.size)) * sizes).astype(np.int64)
        (mu,) = prenet.run(None, {"codes": window.astype(np.int64)})
        z, source = noise.window(w, 0, codes)
        mask = np.ones((1, 1, mu.shape[-1]), np.float32)
        mel = euler_cfg_solve(onnx_cfg_pair(lambda f: estimator.run(None, f)[0]), z, mu, mask, steps,
                              cfg.flow.cfg_rate)
        feeds.append({"mel": mel.astype(np.float32), "noise": source, "harmonic_phase": noise.phases(w),
                      **SourcePhase(cfg.vocoder.nb_harmonics + 1).feeds(0)})
    return feeds


class Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.items = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def learned_convs(model: onnx.ModelProto) -> list[str]:
    """Conv nodes whose weight is a learned initializer (the STFT's DFT basis is a Constant node)."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]


def snr_db(got: np.ndarray, want: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want**2) / max(np.sum((got - want) ** 2), 1e-30)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an fp32 model package")
    ap.add_argument("--windows", type=int, default=8, help="calibration windows (as many more are held out)")
    ap.add_argument("--codes", type=int, default=22, help="codes per window (cpu-2core: 16 new + 6 left context)")
    ap.add_argument("--flow-steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    pkg = Path(args.model)
    feeds = vocoder_inputs(pkg, 2 * args.windows, args.codes, args.flow_steps, args.threads)
    calibration, held_out = feeds[:args.windows], feeds[args.windows:]
    model = onnx.load(str(pkg / "vocoder.onnx"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vocoder-int8.onnx"
        quantize_static(str(pkg / "vocoder.onnx"), str(out), Reader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=learned_convs(model), op_types_to_quantize=["Conv"])
        fp32, int8 = session(pkg / "vocoder.onnx", args.threads), session(out, args.threads)
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        snrs = []
        for feed in held_out:
            want = fp32.run(None, feed)[0]
            got = int8.run(None, feed)[0]
            snrs.append(snr_db(got, want))
            for _ in range(args.repeats):  # interleaved, so the shared machine's load hits both alike
                for name, sess in (("fp32", fp32), ("int8", int8)):
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    times[name].append((time.perf_counter() - t0) * 1000)
    f, i = np.median(times["fp32"]), np.median(times["int8"])
    print(f"{len(held_out)} held-out windows of {args.codes} codes, {args.threads} threads, {args.repeats} "
          f"interleaved repeats each")
    print("| vocoder | ms per window (median) | ratio | SNR vs fp32 (min / median) |")
    print("|---|---|---|---|")
    print(f"| fp32 | {f:.0f} | 1.00 | |")
    print(f"| int8 static QDQ, learned Convs | {i:.0f} | {i / f:.2f} | {min(snrs):.1f} / {np.median(snrs):.1f} dB |")


if __name__ == "__main__":
    main()
