"""The int4 llm's speed/accuracy trade-off: block size, rounding and attention bits, measured side by side.

Each configuration ``rounding:block:attention_bits`` (e.g. ``rtn:32:8``, the recipe before this study;
``rtn:128:8``) quantizes the fp32 package's llm with ``quant/blocks.py`` into ``--workdir`` (kept
for reruns), then:

- accuracy against the fp32 llm with the quantization report's own check (``quant/accuracy.py``:
  teacher-forced 64 steps, logits relative L2 and top-1 agreement) on ``--prompts`` probe prompts;
- decode ms per token at each context, every configuration's session open at once and the steps
  interleaved in rounds (round r times config 1, 2, ... in a shuffled order), so the machine's load
  falls on all of them alike; the figure is the median over rounds.

    python tools/int4_llm_study.py --package small-pkg --workdir int4-study \\
        --configs rtn:32:8,rtn:64:8,rtn:128:8,rtn:128:4 --contexts 128,1024
    python tools/int4_llm_study.py --package small-pkg --workdir int4-study --prompts 0 \
        --graphs folded=new-int4/llm.onnx,unfolded=old-int4/llm.onnx
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bcaudio.benchmarks.op_profile import llm_profile
from bcaudio.quant.accuracy import _llm, _Probe
from bcaudio.quant.blocks import quantize_blocks
from bcaudio.runtime.package.llm_state import LlmState
from bcaudio.runtime.package.manifest import load_manifest


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", type=Path, required=True, help="fp32 package (fast llm graph)")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--configs", default="rtn:32:8,rtn:64:8,rtn:128:8,rtn:128:4")
    ap.add_argument("--contexts", default="128,1024")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per config per round and context")
    ap.add_argument("--prompts", type=int, default=3, help="probe prompts for accuracy (0: speed only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--graphs", default="", help="NAME=llm.onnx,...: already quantized llm graphs to time instead "
                    "of --configs (e.g. one quantizer change against another)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--profile", help="only profile this configuration's decode step per op (at the first context)")
    args = ap.parse_args()
    manifest = load_manifest(args.package, verify=False)
    cfg = manifest.model_config()
    fp32 = args.package / manifest.graphs["llm"].file
    graphs = {name: Path(path) for name, path in (g.split("=", 1) for g in args.graphs.split(",") if g)}
    for spec in args.configs.split(",") if not graphs else ():
        rounding, block, attention = spec.split(":")
        dst = args.workdir / spec.replace(":", "-") / "llm.onnx"
        if not dst.exists():
            start = time.perf_counter()
            quantize_blocks(fp32, dst, "llm", 4, int(block), rounding=rounding, attention_bits=int(attention))
            print(f"{spec}: quantized in {time.perf_counter() - start:.0f} s", flush=True)
        graphs[spec] = dst
    if args.profile:
        context = int(args.contexts.split(",")[0])
        rows = llm_profile(graphs[args.profile], cfg, context, args.threads, steps=40)
        total = sum(g.ms for g in rows)
        for g in rows:
            print(f"{g.name:40s} {g.ms:7.2f} ms/step {100 * g.ms / total:5.1f} %  {g.mb:6.1f} MB")
        return
    results: dict[str, dict] = {s: {"bytes": sum(p.stat().st_size for p in g.parent.glob(g.name + "*"))}
                                for s, g in graphs.items()}
    reference = _session(fp32, args.threads) if args.prompts else None
    for spec, graph in graphs.items() if args.prompts else ():
        quantized = _session(graph, args.threads)
        checks = [_llm((quantized, reference), _Probe(cfg, seed)) for seed in range(args.prompts)]
        results[spec]["accuracy"] = {k: [c[k] for c in checks] for k in ("top1_agreement", "logits_rel_l2")}
        print(spec, json.dumps(results[spec]["accuracy"]), flush=True)
        del quantized
    del reference
    contexts = [int(c) for c in args.contexts.split(",")]
    c = cfg.llm
    states = {s: LlmState(_session(g, args.threads), c.kv_heads, c.head_dim, cfg.bridge.num_codebooks)
              for s, g in graphs.items()}
    ids = np.random.default_rng(0).integers(0, 1000, max(contexts) + 1).tolist()
    times: dict[str, dict[int, list[float]]] = {s: {n: [] for n in contexts} for s in graphs}
    rng = np.random.default_rng(1)
    for n in contexts:
        for state in states.values():
            state.reset()
            state.feed(ids[:n])
        for _ in range(args.rounds):
            for spec in rng.permutation(list(states)):
                state = states[spec]
                for _ in range(args.steps + 1):  # the first of each burst warms the caches up
                    start = time.perf_counter()
                    state.feed(ids[n:n + 1])
                    times[spec][n].append((time.perf_counter() - start) * 1000)
                    state.truncate(n)
                times[spec][n].pop(-args.steps - 1)
    base = next(iter(graphs))
    for spec in graphs:
        results[spec]["decode_ms"] = {n: statistics.median(times[spec][n]) for n in contexts}
    for spec in graphs:
        r = results[spec]
        speed = " ".join(f"@{n} {r['decode_ms'][n]:.2f} ms ({results[base]['decode_ms'][n] / r['decode_ms'][n]:.2f}x)"
                         for n in contexts)
        acc = r.get("accuracy")
        quality = (f"rel L2 {min(acc['logits_rel_l2']):.3f}-{max(acc['logits_rel_l2']):.3f}  top-1 "
                   f"{min(acc['top1_agreement']):.2f}-{max(acc['top1_agreement']):.2f}  " if acc else "")
        print(f"{spec:16s} {r['bytes'] / 1e6:7.0f} MB  {quality}{speed}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
