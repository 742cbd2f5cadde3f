"""Is the int4 decode step at the memory wall? Per-op time of bcaudio's and onnxruntime-genai's graphs.

For each graph and context: onnxruntime's profile of ``--steps`` decode steps (batch 1, 2 threads),
grouped by op (MatMulNBits by bits and by what it multiplies), with the MB each MatMulNBits group
reads per step and the GB/s it reached, beside this machine's streaming bandwidth read at the start
and the end (``benchmarks/bandwidth.py``). The graphs take turns, ``--rounds`` times; the medians are
printed. A MatMulNBits group that reads near the machine's bandwidth cannot go faster on the same
bytes: the step is then the kernel's, whichever tool wrote the graph (issue 18, docs/benchmarks.md).

    python tools/decode_wall.py --package small-int4 --genai bench/genai-int4 --contexts 128,1024 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bcaudio.benchmarks.bandwidth import measure_bandwidth
from bcaudio.benchmarks.op_profile import OpGroup, llm_profile, profile_steps
from bcaudio.runtime.package.manifest import load_manifest


def genai_profile(folder: Path, context: int, threads: int, steps: int) -> list[OpGroup]:
    """The builder's graph driven by plain onnxruntime with its own I/O (input_ids, attention_mask,
    past_key_values.N.key / .value -> logits, present.N.key / .value)."""
    ids = np.random.default_rng(0).integers(0, 1000, (1, context + 1))  # as llm_profile's
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    kv_shape = (1, decoder["num_key_value_heads"], 0, decoder["head_size"])

    def prepare(session: ort.InferenceSession) -> dict[str, np.ndarray]:
        feeds = {"input_ids": ids[:, :context], "attention_mask": np.ones((1, context), np.int64)}
        pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values")]
        for i in pasts:
            feeds[i.name] = np.zeros(kv_shape, np.float32)
        outputs = [o.name for o in session.get_outputs()]
        presents = dict(zip(outputs, session.run(None, feeds), strict=True))
        past = {i.name: presents[i.name.replace("past_key_values", "present")] for i in pasts}
        return {"input_ids": ids[:, context:], "attention_mask": np.ones((1, context + 1), np.int64), **past}

    def step(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> None:
        session.run(["logits"], feeds)

    return profile_steps(folder / "model.onnx", threads, prepare, step, steps)


def _table(name: str, context: int, runs: list[list[OpGroup]]) -> list[str]:
    keys = [g.name for g in runs[0]]
    med = {k: statistics.median(next((g.ms for g in r if g.name == k), 0.0) for r in runs) for k in keys}
    mb = {g.name: g.mb for g in runs[0]}
    total = sum(med.values())
    nbits = sum(v for k, v in med.items() if k.startswith("MatMulNBits"))
    nbits_mb = sum(v for k, v in mb.items() if k.startswith("MatMulNBits"))
    lines = [f"\n{name} @ {context}: {total:.2f} ms of kernels per step; MatMulNBits {nbits:.2f} ms "
             f"({100 * nbits / total:.0f} %), {nbits_mb:.0f} MB at {nbits_mb / nbits:.1f} GB/s\n",
             "| op | ms / step | share | MB / step | GB/s |", "|---|---|---|---|---|"]
    for k in sorted(keys, key=lambda k: -med[k]):
        if med[k] / total < 0.005:
            continue
        rate = f"{mb[k] / med[k]:.1f}" if mb[k] else ""
        lines.append(f"| {k} | {med[k]:.2f} | {100 * med[k] / total:.1f} % | {mb[k]:.1f} | {rate} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", type=Path, required=True, help="a bcaudio package with an int4 llm")
    ap.add_argument("--genai", type=Path, help="onnxruntime-genai's model folder (bcaudio bench's genai-int4)")
    ap.add_argument("--contexts", default="128,1024")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    before = measure_bandwidth(256, args.threads)
    cfg = load_manifest(args.package, verify=False).model_config()
    graphs = {"bcaudio-int4": lambda n: llm_profile(args.package / "llm.onnx", cfg, n, args.threads, args.steps)}
    if args.genai:
        graphs["genai-int4"] = lambda n: genai_profile(args.genai, n, args.threads, args.steps)
    contexts = [int(c) for c in args.contexts.split(",")]
    runs: dict[tuple[str, int], list[list[OpGroup]]] = {(g, n): [] for g in graphs for n in contexts}
    for r in range(args.rounds):
        order = list(graphs) if r % 2 == 0 else list(reversed(graphs))
        for n in contexts:
            for g in order:
                runs[g, n].append(graphs[g](n))
                print(f"round {r + 1}: {g} @ {n} done", flush=True)
    after = measure_bandwidth(256, args.threads)
    print(f"\nstreaming bandwidth (sum of a 256 MB array): {before.best_gb_s:.1f} GB/s before, "
          f"{after.best_gb_s:.1f} GB/s after; {args.rounds} rounds x {args.steps} steps, {args.threads} threads")
    for (g, n), r in runs.items():
        print("\n".join(_table(g, n, r)))


if __name__ == "__main__":
    main()
