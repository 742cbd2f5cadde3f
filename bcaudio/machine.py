"""What this machine can take: cores, a sane thread ceiling, free memory (stdlib only, for the CLI and runtime)."""

from __future__ import annotations

import os
from pathlib import Path

THREADS_PER_CORE_LIMIT = 4  # more intra-op threads than this per core only thrash; 9999 exhausted the process table


def cores() -> int:
    """CPU cores this process may run on (the affinity mask, which a container may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_threads() -> int:
    """The most intra-op threads a session may ask for here."""
    return THREADS_PER_CORE_LIMIT * cores()


def available_mb() -> int:
    """Memory available to new allocations (MemAvailable), in MB; 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
