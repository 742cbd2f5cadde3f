"""Export of the audio head as one *step* graph: a frame costs 8 calls with a depth KV cache of <= 7 positions.

I/O contract (B batch, p = depth position 0..K-1, NL head layers, NH heads of D):

inputs
  hidden          float (B, H)     the LLM's final-normed hidden state of the frame (read at p = 0)
  running         float (B, H)     running sum of code embeddings from the previous call (zeros at p = 0)
  prev_code       int64 (B,)       the code chosen at p - 1 (ignored at p = 0)
  position        int64 (1,)       p
  past_key.{l}    float (B, NH, p, D)
  past_value.{l}  float (B, NH, p, D)
outputs
  logits          float (B, size_p + 1)   codebook p's classes; the last one is its EOS class
  running_out     float (B, H)            feed back as ``running``
  present_key.{l} float (B, NH, p + 1, D)
  present_value.{l}

The depth input of position p > 0 is ``running + table_{p-1}[prev_code]`` (spec §7), so the
codebook embeddings are inside this graph and the runtime only moves codes. The graph is built
from the weights (:mod:`bcaudio.export.audio_head_graph`): position-specific FFN and head
weights live in the branches of an ``If`` tree on ``position``, so every MatMul reads a constant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.audio_head import AudioHead
from bcaudio.export.audio_head_graph import build_audio_head_graph
from bcaudio.export.deferred import Rewrite, write_graph
from bcaudio.export.weights import StateDictWeights, Weights

# 21: the int4 recipe's GatherBlockQuantized (code tables) needs it; writing it directly spares the
# quantizer an opset conversion, which cannot serialize a graph past 2 GB (7B: 6 GB of weights).
AUDIO_HEAD_OPSET = 21


def audio_head_io_names(cfg: ModelConfig) -> tuple[list[str], list[str]]:
    layers = range(cfg.audio_head.layers)
    past = [n for i in layers for n in (f"past_key.{i}", f"past_value.{i}")]
    present = [n for i in layers for n in (f"present_key.{i}", f"present_value.{i}")]
    return ["hidden", "running", "prev_code", "position", *past], ["logits", "running_out", *present]


def _quiet(_: str) -> None:
    pass


def export_audio_head(head: AudioHead | Weights, tables: nn.ModuleList | None, cfg: ModelConfig, path: Path,
                      opset: int = AUDIO_HEAD_OPSET, rewrite: Rewrite | None = None,
                      progress: Callable[[str], None] = _quiet) -> list[Path]:
    """Write the graph at ``opset`` or AUDIO_HEAD_OPSET, whichever is newer, from a module and the llm's code
    tables, or from checkpoint :class:`Weights` (``tables`` None); weights are read and written one at a time
    (through ``rewrite``, a quantizer, when given), to one external-data file past the protobuf limit."""
    if isinstance(head, nn.Module):
        tensors = {"audio_head." + k: v for k, v in head.state_dict().items()}
        tensors.update({f"model.audio_embed_layers.{i}.weight": t.weight for i, t in enumerate(tables)})
        head = StateDictWeights(tensors)
    model, deferred = build_audio_head_graph(head, cfg, max(opset, AUDIO_HEAD_OPSET))
    return write_graph(model, deferred, path, rewrite, progress, "audio_head")
