"""Checkpoint tensors read one at a time, by official key, as fp32 numpy arrays.

The graphs built from the weights (llm, audio head) take their weights from here rather than
from a loaded torch module: a 7B llm in fp32 is 30 GB, more than the machine has. A tensor is
read from its safetensors shard only when the graph writer asks for it, converted to fp32, used
and dropped; each read opens and closes the shard, so its memory map (resident pages count as
RSS) never outlives the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from bcaudio.export.checkpoint import finite, open_weights


class Weights(Protocol):
    """Official key -> tensor, materialized on request."""

    def get(self, key: str) -> np.ndarray:
        """The whole tensor as a contiguous float32 array."""

    def columns(self, key: str, start: int, stop: int) -> np.ndarray:
        """``tensor[:, start:stop]`` of a 2-D tensor, without reading the rest where the storage allows."""

    def shape(self, key: str) -> tuple[int, ...]:
        """The tensor's shape, without reading its data."""


def _fp32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())


class CheckpointWeights:
    """Tensors of a safetensors checkpoint (single file or shards + index), read lazily."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = dict(files)

    def get(self, key: str) -> np.ndarray:
        with open_weights(self.files[key]) as f:
            return _fp32(finite(key, f.get_tensor(key), self.files[key]))

    def columns(self, key: str, start: int, stop: int) -> np.ndarray:
        with open_weights(self.files[key]) as f:
            return _fp32(finite(key, f.get_slice(key)[:, start:stop], self.files[key]))

    def shape(self, key: str) -> tuple[int, ...]:
        with open_weights(self.files[key]) as f:
            return tuple(f.get_slice(key).get_shape())


class StateDictWeights:
    """Tensors already in memory (a torch module's state dict under official keys): tests and small exports."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = dict(tensors)

    def get(self, key: str) -> np.ndarray:
        return _fp32(self.tensors[key])

    def columns(self, key: str, start: int, stop: int) -> np.ndarray:
        return _fp32(self.tensors[key][:, start:stop])

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)


class ShapeWeights:
    """Stand-ins with the shapes of ``weights``' tensors and no data (a broadcast fp32 zero): a builder run on
    them tells each deferred weight's shape without reading the checkpoint. The fp16 writer needs every
    shape before the first weight is written, since the converter decides on the whole graph."""

    def __init__(self, weights: Weights) -> None:
        self.weights = weights

    def get(self, key: str) -> np.ndarray:
        return np.broadcast_to(np.float32(0), self.weights.shape(key))

    def columns(self, key: str, start: int, stop: int) -> np.ndarray:
        return np.broadcast_to(np.float32(0), (self.weights.shape(key)[0], stop - start))

    def shape(self, key: str) -> tuple[int, ...]:
        return self.weights.shape(key)


def module_weights(module: torch.nn.Module, prefix: str = "") -> StateDictWeights:
    """A module's state dict under its official key prefix."""
    return StateDictWeights({prefix + k: v for k, v in module.state_dict().items()})
