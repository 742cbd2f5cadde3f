"""Where a vocoder window's time goes, by module: onnxruntime's per-node profile summed by scope.

The float64 F0 predictor (README "Random vocoders are voiced") costs more than the fp32 one it
replaced; this says how much of a window's vocoder time it takes, beside the source and the
upsampling stack, from one process's node timings (a share, so less moved by the machine's load
than a wall time is).

    python tools/vocoder_stage_profile.py --model PKG [--frames 88] [--runs 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def scope(node: str) -> str:
    """The top-level module a torch-exported node belongs to (``/f0_predictor/...`` -> ``f0_predictor``)."""
    parts = node.split("/")
    name = parts[1] if node.startswith("/") and len(parts) > 2 else "other"
    return name.split(".")[0]  # resblocks.3 -> resblocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="model package folder")
    parser.add_argument("--frames", type=int, default=88, help="mel frames of the window (88: a 22-code window)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs after 3 untimed ones")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "vocoder")
        sess = ort.InferenceSession(str(args.model / "vocoder.onnx"), opts, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        samples = args.frames * 480
        feed = {"mel": rng.standard_normal((1, 80, args.frames)).astype(np.float32) - 4,
                "noise": (rng.standard_normal((1, 9, samples)) * 0.003).astype(np.float32),
                "harmonic_phase": np.zeros((1, 9), np.float32), "start_phase": np.zeros((1, 9), np.float32),
                "start_frame": np.zeros(1, np.int64)}
        for _ in range(3 + args.runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    timed_from = runs[3]["ts"]
    per_scope: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= timed_from:
            per_scope[scope(e["name"][: -len("_kernel_time")])] += e["dur"]
    total_run = sum(r["dur"] for r in runs[3:]) / args.runs / 1000
    total_nodes = sum(per_scope.values())
    print(f"vocoder, {args.frames} mel frames ({samples / 24000:.2f} s), {args.threads} threads: "
          f"{total_run:.1f} ms a run (mean of {args.runs})\n")
    print("| module | ms a run | share of node time |\n|---|---|---|")
    for name, us in per_scope.most_common():
        print(f"| {name} | {us / args.runs / 1000:.1f} | {us / total_nodes:.1%} |")


if __name__ == "__main__":
    main()
