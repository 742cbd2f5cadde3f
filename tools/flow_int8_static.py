"""Is a statically quantized (int8 QDQ, calibrated) flow estimator faster, and how far is its mel from fp32?

Issue 17 names the flow's convolutions in int8 static as a lever: the flow is 14-19 % of a streamed
CPU turn, and dynamic int8 (the `int8` recipe) measured no faster than fp32, its per-call activation
quantization eating the gain. This quantizes the estimator's learned MatMuls and Convs (or only the
Convs, ``--ops Conv``) with onnxruntime's static quantizer: QDQ format, per-channel weights, activation
ranges calibrated on the estimator's own inputs at every Euler step of code windows decoded by the
package's pre-net. Then, on windows held out of the calibration, interleaved in one process: ms per
window decode (6 Euler steps, CFG batch of 2) for fp32 and int8, and the mel error against fp32 by the
metric and bound of the `int8` recipe (quant/accuracy.py: mean |mel| difference <= 0.02).

    python tools/flow_int8_static.py --model PKG [--windows 6] [--codes 22] [--repeats 5] [--ops MatMul,Conv] \
        [--calibration MinMax|Entropy|Percentile|Distribution]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from vocoder_int8_static import Reader, session

from bcaudio.quant.accuracy import TOLERANCES
from bcaudio.runtime.generation.flow_solver import euler_cfg_solve, onnx_cfg_pair
from bcaudio.runtime.generation.noise import NoiseSource
from bcaudio.runtime.package.manifest import load_manifest


class Window:
    """One code window's solve inputs: the pre-net's mu, the noise, the mask."""

    def __init__(self, mu: np.ndarray, z: np.ndarray) -> None:
        self.mu, self.z = mu, z
        self.mask = np.ones((1, 1, mu.shape[-1]), np.float32)

    def solve(self, estimator: ort.InferenceSession, steps: int, cfg_rate: float,
              seen: list[dict[str, np.ndarray]] | None = None) -> np.ndarray:
        """The mel of this window; ``seen`` collects every estimator feed (the calibration data)."""
        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            if seen is not None:
                seen.append(feeds)
            return estimator.run(None, feeds)[0]

        return euler_cfg_solve(onnx_cfg_pair(run), self.z, self.mu, self.mask, steps, cfg_rate)


def windows(pkg: Path, count: int, codes: int, threads: int) -> list[Window]:
    cfg = load_manifest(pkg, verify=False).model_config()
    prenet = session(pkg / "flow_prenet.onnx", threads)
    noise = NoiseSource(cfg, seed=0)
    rng = np.random.default_rng(0)
    sizes = np.array(cfg.bridge.codebook_sizes)
    out = []
    for w in range(count):
        window = (rng.random((1, codes, sizes.size)) * sizes).astype(np.int64)
        (mu,) = prenet.run(None, {"codes": window})
        out.append(Window(mu, noise.window(w, 0, codes)[0]))
    return out


def learned(model: onnx.ModelProto, ops: set[str]) -> list[str]:
    """Nodes of ``ops`` whose weight (second input) is an initializer: the learned layers, not the attention's
    activation-by-activation MatMuls."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ops and len(n.input) > 1 and n.input[1] in inits]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model package with an fp32 flow estimator")
    ap.add_argument("--windows", type=int, default=6, help="calibration windows (as many more are held out)")
    ap.add_argument("--codes", type=int, default=22, help="codes per window")
    ap.add_argument("--flow-steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ops", default="MatMul,Conv", help="op types to quantize")
    ap.add_argument("--calibration", default="MinMax", choices=[m.name for m in CalibrationMethod],
                    help="how activation ranges are set from the calibration data")
    args = ap.parse_args()
    pkg = Path(args.model)
    cfg = load_manifest(pkg, verify=False).model_config()
    graph = pkg / "flow_estimator.onnx"
    fp32 = session(graph, args.threads)
    all_windows = windows(pkg, 2 * args.windows, args.codes, args.threads)
    calibration, held_out = all_windows[:args.windows], all_windows[args.windows:]
    seen: list[dict[str, np.ndarray]] = []
    for w in calibration:
        w.solve(fp32, args.flow_steps, cfg.flow.cfg_rate, seen)
    model = onnx.load(str(graph))
    nodes = learned(model, set(args.ops.split(",")))
    bound = TOLERANCES["int8"]["flow_estimator"]["mel_l1"][1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "flow_estimator-int8.onnx"
        quantize_static(str(graph), str(out), Reader(seen), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                        op_types_to_quantize=args.ops.split(","),
                        calibrate_method=CalibrationMethod[args.calibration])
        int8 = session(out, args.threads)
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        l1 = []
        for w in held_out:
            want = w.solve(fp32, args.flow_steps, cfg.flow.cfg_rate)
            got = w.solve(int8, args.flow_steps, cfg.flow.cfg_rate)
            l1.append(float(np.abs(got - want).mean()))
            for _ in range(args.repeats):  # interleaved, so the machine's load hits both alike
                for name, sess in (("fp32", fp32), ("int8", int8)):
                    t0 = time.perf_counter()
                    w.solve(sess, args.flow_steps, cfg.flow.cfg_rate)
                    times[name].append((time.perf_counter() - t0) * 1000)
    f, i = np.median(times["fp32"]), np.median(times["int8"])
    print(f"{len(held_out)} held-out windows of {args.codes} codes, {args.flow_steps} Euler steps, {args.threads} "
          f"threads, {args.repeats} interleaved repeats each; {len(nodes)} {args.ops} nodes quantized")
    print("| flow estimator | ms per window solve (median) | ratio | mel L1 vs fp32 (median / max) | int8 bound |")
    print("|---|---|---|---|---|")
    print(f"| fp32 | {f:.0f} | 1.00 | | |")
    print(f"| int8 static QDQ ({args.ops}, {args.calibration}) | {i:.0f} | {i / f:.2f} | "
          f"{np.median(l1):.4f} / {max(l1):.4f} | <= {bound} |")


if __name__ == "__main__":
    main()
