"""sha256 of files, read in 16 MiB blocks (graphs and checkpoints are gigabytes): one helper for the manifest,
the checkpoint identity and the benchmark cache."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def update_with_file(digest: Any, path: Path) -> None:
    """Feed ``path``'s bytes to a hashlib ``digest``."""
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()
