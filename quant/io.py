"""Quantization I/O helpers: graph saving is ``bcaudio.onnx_files``; this keeps the quantizer quiet."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger (one line per node, and a pre-processing hint
    that does not apply to weight-only/dynamic quantization); silence it for the call only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
