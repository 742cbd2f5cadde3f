"""The nodes of each graph that every recipe keeps in fp32, and why.

Measured on the tiny package (see the accuracy reports): these are the places where
a rounding error is not averaged out but decides a discrete choice or is integrated.

- audio_tokenizer: the log-mel frontend (STFT as a Conv, power, mel MatMul, Log) feeds
  every later layer, and the RVQ distances (``|x|^2 + |c|^2 - 2 x.c``, Sqrt, ArgMin) pick
  the codes: a small error in a near-tie flips a code. Only ``/encoder/`` and ``/bridge/``
  are quantized.
- vocoder: the STFT/iSTFT convolutions, the F0 predictor and the sine source: the source
  integrates the predicted F0 into a phase, so an error grows with the number of samples.
"""

from __future__ import annotations

import onnx

_QUANTIZABLE_PREFIXES = {"audio_tokenizer": ("/encoder/", "/bridge/")}
_FP32_PREFIXES = {"vocoder": ("/stft/", "/istft/", "/m_source/", "/f0_predictor/")}


def fp32_nodes(graph: str, model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of ``graph`` that must stay fp32 whatever the recipe says."""
    names = [n.name for n in model.graph.node if n.name]
    if graph in _QUANTIZABLE_PREFIXES:
        keep = _QUANTIZABLE_PREFIXES[graph]
        return [n for n in names if not n.startswith(keep)]
    prefixes = _FP32_PREFIXES.get(graph, ())
    return [n for n in names if n.startswith(prefixes)] if prefixes else []
