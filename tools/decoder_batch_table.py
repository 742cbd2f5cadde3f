"""Would batching flow and vocoder windows across sessions raise a box's throughput? Batch 1 vs N, per session.

The llm and audio head batch well on a CPU (each weight is streamed once for every row). The flow
estimator and the vocoder are a different kind of work: convolutions and attention over a whole
window of mel frames, compute-bound already at batch 1. This measures one package's two graphs at
the device profile's window sizes (the first streamed window and a later one, each with its left
context), batch 1 and batch N, in rounds that alternate the batch sizes, and prints the time per
session's window: if batch N costs N times batch 1, batching those windows saves nothing.

    python tools/decoder_batch_table.py --model PKG [--device-profile cpu-2core] [--batches 1,2,4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bcaudio.runtime.package.profiles import resolve_profile
from bcaudio.runtime.package.sessions import PackageSessions


def feeds(sessions: PackageSessions, codes: int, batch: int) -> tuple[dict, dict]:
    """Estimator feeds (the conditional and unconditional halves of ``batch`` sessions) and vocoder feeds."""
    cfg = sessions.cfg
    (mu,) = sessions.run("flow_prenet", {"codes": np.zeros((1, codes, cfg.bridge.num_codebooks), np.int64)})
    frames = mu.shape[-1]
    rng = np.random.default_rng(0)
    est = {"x": rng.standard_normal((2 * batch, 80, frames), np.float32),
           "mu": np.repeat(mu, 2 * batch, axis=0).astype(np.float32), "t": np.full(2 * batch, 0.5, np.float32),
           "mask": np.ones((2 * batch, 1, frames), np.float32)}
    harmonics = cfg.vocoder.nb_harmonics + 1
    hop = cfg.vocoder.samples_per_frame
    voc = {"mel": 0.1 * rng.standard_normal((batch, 80, frames), np.float32),
           "noise": np.zeros((batch, harmonics, frames * hop), np.float32),
           "harmonic_phase": np.zeros((batch, harmonics), np.float32),
           "start_phase": np.zeros((batch, harmonics), np.float32), "start_frame": np.zeros(batch, np.int64)}
    return est, voc


def timed(sessions: PackageSessions, graph: str, feed: dict) -> float:
    start = time.perf_counter()
    sessions.run(graph, feed)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--device-profile", default="cpu-2core")
    p.add_argument("--batches", default="1,2,4")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    profile = resolve_profile(args.device_profile, print)
    sessions = PackageSessions(args.model, profile.session, graphs=("flow_prenet", "flow_estimator", "vocoder"),
                               log=lambda _: None)
    gen = profile.generation
    windows = {"first": gen.stream_first_chunk_frames or gen.stream_chunk_frames,
               "later": gen.stream_chunk_frames + gen.stream_left_context_frames}
    batches = [int(b) for b in args.batches.split(",")]
    cases = {(w, b): feeds(sessions, codes, b) for w, codes in windows.items() for b in batches}
    times: dict[tuple[str, str, int], list[float]] = {}
    for est, voc in cases.values():  # warm-up: first runs allocate
        timed(sessions, "flow_estimator", est)
        timed(sessions, "vocoder", voc)
    for r in range(args.rounds):
        for (w, b), (est, voc) in (list(cases.items()) if r % 2 == 0 else list(cases.items())[::-1]):
            times.setdefault((w, "flow_estimator", b), []).append(timed(sessions, "flow_estimator", est) / b)
            times.setdefault((w, "vocoder", b), []).append(timed(sessions, "vocoder", voc) / b)
    print(f"| window (codes) | graph | {' | '.join(f'ms per session at batch {b}' for b in batches)} |")
    print(f"|---|---|{'---|' * len(batches)}")
    for w, codes in windows.items():
        for graph in ("flow_estimator", "vocoder"):
            base = statistics.median(times[(w, graph, batches[0])])
            cells = [f"{1000 * statistics.median(times[(w, graph, b)]):.1f} "
                     f"({statistics.median(times[(w, graph, b)]) / base:.2f}x)" for b in batches]
            print(f"| {w} ({codes}) | {graph}{' (one Euler step, CFG pair)' if graph == 'flow_estimator' else ''} "
                  f"| {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
