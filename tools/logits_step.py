"""An audio frame's llm step with and without the lm_head (``with_logits``), interleaved in one process.

The speech loop feeds each audio frame with ``logits=False`` (runtime/generation/speech_loop.py); this times
that step both ways on one session, the order alternated every round so the load of a shared machine falls on
both alike, from the same context each time (the cache cut back to it), and prints the medians, their ratio
and the weight bytes each step reads (benchmarks/roofline.py). A graph without ``with_logits`` (exported
before it) runs the lm_head both ways: its ratio is the noise floor.

    python tools/logits_step.py --model PKG [--device-profile cpu-2core] [--rounds 40] [--context 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bcaudio.benchmarks.roofline import onnx_step_bytes
from bcaudio.runtime.package.llm_state import LlmState
from bcaudio.runtime.package.manifest import load_manifest
from bcaudio.runtime.package.profiles import resolve_profile
from bcaudio.runtime.package.sessions import PackageSessions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--device-profile", default="cpu-2core")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--context", type=int, default=200, help="positions in the cache before the frame")
    args = ap.parse_args()
    profile = resolve_profile(args.device_profile, print)
    sessions = PackageSessions(args.model, profile.session, graphs=["llm"], log=lambda _: None)
    cfg = sessions.cfg
    c, k = cfg.llm, cfg.bridge.num_codebooks
    state = LlmState(sessions["llm"], c.kv_heads, c.head_dim, k, max_positions=c.max_position_embeddings)
    rng = np.random.default_rng(0)
    state.feed(rng.integers(0, cfg.tokens.eos, args.context).tolist(), logits=False)
    codes = rng.integers(0, min(cfg.bridge.codebook_sizes), (1, k))
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.rounds + 1):  # round 0 warms both up
        for logits in ((True, False) if r % 2 else (False, True)):
            state.truncate(args.context)
            start = time.perf_counter()
            state.feed([cfg.tokens.audio_pad], codes, logits=logits)
            if r:
                times[logits].append(time.perf_counter() - start)
    with_ms, without_ms = (1e3 * float(np.median(times[flag])) for flag in (True, False))
    graph = args.model / load_manifest(args.model).graphs["llm"].file
    with_mb, without_mb = (onnx_step_bytes(graph, logits=flag) / 1e6 for flag in (True, False))
    print(f"{args.model}: with_logits input {'yes' if state.skips_logits else 'no (the lm_head runs always)'}, "
          f"context {args.context}, {args.rounds} rounds, threads {profile.session.intra_op_threads}")
    print(f"  audio-frame llm step, logits:    median {with_ms:.2f} ms, weights read {with_mb:.1f} MB")
    print(f"  audio-frame llm step, no logits: median {without_ms:.2f} ms, weights read {without_mb:.1f} MB")
    print(f"  no logits / logits: {without_ms / with_ms:.3f} (time), {without_mb / with_mb:.3f} (bytes)")


if __name__ == "__main__":
    main()
