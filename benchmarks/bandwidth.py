"""Streaming-read bandwidth of this machine: the denominator of the decode roofline.

A decode step reads every weight once and does little arithmetic per byte, so its floor is bytes /
bandwidth. numpy's reductions stream an array at close to the memory bus's rate and release the
GIL, so one thread per core summing its own slice shows what all cores together can pull.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

DEFAULT_ARRAY_MB = 512  # far past any last-level cache, so the reads come from DRAM


@dataclass
class Bandwidth:
    single_thread_gb_s: float
    all_threads_gb_s: float
    threads: int
    array_mb: int

    @property
    def best_gb_s(self) -> float:
        return max(self.single_thread_gb_s, self.all_threads_gb_s)


def _best_rate(read: Callable[[], object], nbytes: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def measure_bandwidth(array_mb: int = DEFAULT_ARRAY_MB, threads: int | None = None, repeats: int = 5) -> Bandwidth:
    """Best-of-``repeats`` GB/s of summing a float32 array of ``array_mb`` MB, on one thread and on ``threads``."""
    threads = threads or os.cpu_count() or 1
    data = np.ones(array_mb * 2**20 // 4, dtype=np.float32)  # ones, not empty: every page is really mapped
    slices = np.array_split(data, threads)
    single = _best_rate(lambda: data.sum(), data.nbytes, repeats)
    with ThreadPoolExecutor(threads) as pool:
        multi = _best_rate(lambda: list(pool.map(np.sum, slices)), data.nbytes, repeats)
    return Bandwidth(single, multi, threads, array_mb)
