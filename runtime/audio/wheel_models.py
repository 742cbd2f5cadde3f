"""Model files shipped inside Python wheels that are installed with ``--no-deps`` and never imported.

Silero VAD and Smart Turn ship their ONNX graphs in packages whose Python needs torch or a whole
framework; the runtime reads only the file, found through the distribution's file list
(``importlib.metadata``), or an explicit path in an environment variable.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path


def find_wheel_file(distribution: str, file: str, env: str, hint: str, error: type[Exception]) -> Path:
    """``$env`` when set (it must exist), else ``file`` of the installed ``distribution``; ``error(hint)`` if not."""
    explicit = os.environ.get(env)
    if explicit:
        if not Path(explicit).is_file():
            raise error(f"{env}={explicit}: no such file; {hint}")
        return Path(explicit)
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise error(f"{distribution} is not installed: {hint}") from None
    for entry in dist.files or ():
        if entry.as_posix() == file:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise error(f"{distribution} {dist.version} has no {file}; {hint}")
