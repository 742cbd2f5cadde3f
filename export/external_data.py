"""Initializers written straight to an ONNX external-data file while a graph is being built."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np
import onnx
from onnx import helper

# Offsets aligned like onnx's own writer does for large tensors, so a runtime may map them directly.
ALIGNMENT = 4096


class ExternalData:
    """One ``.data`` file next to the graph; ``write`` returns the TensorProto that points into it."""

    def __init__(self, path: Path, location: str | None = None) -> None:
        """``location``: the file name the tensors point at, when ``path`` is a temporary name renamed later."""
        self.path = path
        self.location = location or path.name
        self._file = open(path, "wb")  # closed by __exit__

    def write(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        offset = -self._file.tell() % ALIGNMENT + self._file.tell()
        self._file.seek(offset)
        self._file.write(array.tobytes())
        tensor = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                                  dims=array.shape, data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        return tensor

    @property
    def bytes_written(self) -> int:
        return self._file.tell()

    def __enter__(self) -> ExternalData:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._file.close()
        if kind is not None:
            self.path.unlink(missing_ok=True)
