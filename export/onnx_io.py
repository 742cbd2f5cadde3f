"""Torch export of one graph, through a temporary folder so large graphs get a single external-data file."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from bcaudio.onnx_files import save_model


def export_module(module: nn.Module, args: Sequence[torch.Tensor], path: Path, input_names: list[str],
                  output_names: list[str], dynamic_axes: dict[str, dict[int, str]], opset: int,
                  graph: str = "") -> list[Path]:
    """TorchScript export (several times faster than dynamo on these graphs: README, "The model package"; and it keeps
    dynamic_axes names), through a temporary folder so graphs over 2 GiB end up with a single external-data file;
    ``graph``: the package graph it is, for ``save_model``'s choice of external data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "graph.onnx"
        torch.onnx.export(module.eval(), tuple(args), str(raw), input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, opset_version=opset,
                          dynamo=False, do_constant_folding=True)
        model = onnx.load(str(raw))
        return save_model(model, path, graph)
