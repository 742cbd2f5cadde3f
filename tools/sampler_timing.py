"""What top-k candidates save the sampler at the real vocabulary size: the figure in docs/benchmarks.md.

``sample_token`` sends only the top-k candidates through softmax, top-p and the draw; the same code
with ``top_k = 0`` sends the whole vocabulary (151,936 ids). Both run interleaved on one random
logits vector with a 430-token repetition history, first text step's settings otherwise.

    python tools/sampler_timing.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bcaudio.config import SamplingParams
from bcaudio.runtime.generation.sampling import sample_token

VOCAB = 151936


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds per variant")
    args = parser.parse_args()
    logits = np.random.default_rng(0).standard_normal(VOCAB).astype(np.float32)
    history = list(range(0, 3000, 7))
    variants = {"top-k 20 candidates (the sampler)": SamplingParams(0.8, 20, 0.85, 1.1),
                "whole vocabulary (top_k 0)": SamplingParams(0.8, 0, 0.85, 1.1)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    rng = np.random.default_rng(1)
    for _ in range(args.rounds):
        for name, params in variants.items():
            start = time.perf_counter()
            sample_token(logits, params, history, rng)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    for name, ms in medians.items():
        print(f"{name}: median {ms:.2f} ms a token")
    whole, topk = medians["whole vocabulary (top_k 0)"], medians["top-k 20 candidates (the sampler)"]
    print(f"ratio {whole / topk:.1f}x")


if __name__ == "__main__":
    main()
