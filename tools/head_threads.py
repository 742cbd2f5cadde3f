"""What a second intra-op thread buys the audio head: wall and CPU time of one greedy frame per batch size.

A frame is the head's eight runs (one per codebook) on the package's own graph; each batch size runs
at 1 and at 2 threads, the order flipped every round, and the medians of ``--rounds`` are printed. On
a box whose turn keeps the cores busy, CPU time is what the decode beside the head loses, so a thread
count that costs less CPU at about the same wall time is the candidate to measure on whole turns
(``tools/latency_levers.py`` variant ``hthreads``; ``[session] head_threads``; docs/benchmarks.md,
"Session 10": on 2 cores the turns could not tell the two apart).

    python tools/head_threads.py --model small-int4 --batches 1,2,4,8 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from bcaudio.runtime.package.sessions import PackageSessions, SessionSettings


def frame_cost(sessions: PackageSessions, batch: int, frames: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per greedy frame, averaged over ``frames`` of them."""
    cfg = sessions.cfg
    inputs = sessions["audio_head"].get_inputs()
    names = [i.name for i in inputs if i.name.startswith("past_")]
    hidden = np.random.default_rng(0).standard_normal((batch, inputs[0].shape[-1])).astype(np.float32)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(frames):
        running, prev = np.zeros_like(hidden), np.zeros(batch, np.int64)
        past = {n: np.zeros((batch, cfg.audio_head_heads, 0, cfg.audio_head.head_dim), np.float32) for n in names}
        for pos in range(cfg.bridge.num_codebooks):
            logits, running, *presents = sessions.run("audio_head", {
                "hidden": hidden, "running": running, "prev_code": prev, "position": np.array([pos], np.int64),
                **past})
            past, prev = dict(zip(names, presents, strict=True)), logits.argmax(-1).astype(np.int64)
    return (time.perf_counter() - wall) / frames * 1e3, (time.process_time() - cpu) / frames * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=30, help="frames per measurement")
    args = ap.parse_args()
    quiet = lambda _: None  # noqa: E731
    sessions = {t: PackageSessions(args.model, SessionSettings(intra_op_threads=2, head_threads=t), ["audio_head"],
                                   log=quiet) for t in (1, 2)}
    batches = [int(b) for b in args.batches.split(",")]
    runs: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        for b in batches:
            for t in (1, 2) if r % 2 == 0 else (2, 1):
                frame_cost(sessions[t], b, 3)  # warm-up: this batch's first-run allocations
                runs.setdefault((b, t), []).append(frame_cost(sessions[t], b, args.frames))
    print("| batch | 1 thread: wall / CPU ms per frame | 2 threads: wall / CPU ms | wall 1 / 2 | CPU 1 / 2 |")
    print("|---|---|---|---|---|")
    for b in batches:
        (w1, c1), (w2, c2) = ((statistics.median(x[0] for x in runs[b, t]), statistics.median(x[1] for x in runs[b, t]))
                              for t in (1, 2))
        print(f"| {b} | {w1:.1f} / {c1:.1f} | {w2:.1f} / {c2:.1f} | {w1 / w2:.2f} | {c1 / c2:.2f} |")


if __name__ == "__main__":
    main()
