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
codebook embeddings are inside this graph and the runtime only moves codes. Position-specific
FFN and head weights are selected in-graph by ``position`` (a Gather/row range per call).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.audio_head import AudioHead
from bcaudio.export.onnx_io import export_module


def _offsets(sizes: list[int]) -> torch.Tensor:
    return torch.tensor([0] + list(np.cumsum([n + 1 for n in sizes])), dtype=torch.long)


class AudioHeadStep(nn.Module):
    def __init__(self, head: AudioHead, tables: nn.ModuleList) -> None:
        super().__init__()
        self.head = head
        d, p = head.headnorm.weight.shape[0], head.positions
        with torch.no_grad():
            self.register_buffer("w1", torch.stack(
                [layer.linear1.weight.view(2 * d, p, d).permute(1, 0, 2) for layer in head.transformer_layers]))
            self.register_buffer("w2", torch.stack(
                [layer.linear2.weight.view(d, p, 2 * d).permute(1, 0, 2) for layer in head.transformer_layers]))
            self.register_buffer("head_w", torch.cat([h.weight for h in head.heads]))
            self.register_buffer("head_b", torch.cat([h.bias for h in head.heads]))
            self.register_buffer("table", torch.cat([t.weight for t in tables]))
        self.register_buffer("head_offsets", _offsets(head.sizes))
        self.register_buffer("table_offsets", _offsets(head.sizes)[:-1])

    def forward(self, hidden: torch.Tensor, running: torch.Tensor, prev_code: torch.Tensor, position: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pos = position.reshape(1)
        prev_pos = torch.clamp(pos - 1, min=0)
        emb = torch.index_select(self.table, 0, torch.index_select(self.table_offsets, 0, prev_pos) + prev_code)
        first = pos == 0
        x = torch.where(first, hidden, running + emb)
        running_out = torch.where(first, torch.zeros_like(hidden), x)
        h = x.unsqueeze(1)
        presents = []
        for i, layer in enumerate(self.head.transformer_layers):
            h, (k, v) = layer.attend(h, (past[2 * i], past[2 * i + 1]), None)
            presents += [k, v]
            r = layer.layernorm2(h)
            w1 = torch.index_select(self.w1[i], 0, pos)[0]
            w2 = torch.index_select(self.w2[i], 0, pos)[0]
            h = r + nn.functional.linear(nn.functional.gelu(nn.functional.linear(r, w1)), w2)
        normed = self.head.headnorm(h[:, 0])
        rows = torch.arange(self.head_offsets[pos][0], self.head_offsets[pos + 1][0])
        logits = nn.functional.linear(normed, self.head_w[rows], self.head_b[rows])
        return (logits, running_out, *presents)


def audio_head_io_names(cfg: ModelConfig) -> tuple[list[str], list[str]]:
    layers = range(cfg.audio_head.layers)
    past = [n for i in layers for n in (f"past_key.{i}", f"past_value.{i}")]
    present = [n for i in layers for n in (f"present_key.{i}", f"present_value.{i}")]
    return ["hidden", "running", "prev_code", "position", *past], ["logits", "running_out", *present]


def audio_head_example_inputs(cfg: ModelConfig, batch: int, position: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = cfg.llm.hidden_size
    prev_size = cfg.bridge.codebook_sizes[max(position - 1, 0)]
    out = {"hidden": rng.standard_normal((batch, d)).astype(np.float32),
           "running": (rng.standard_normal((batch, d)) * 0.05).astype(np.float32),
           "prev_code": rng.integers(0, prev_size, (batch,)).astype(np.int64),
           "position": np.array([position], dtype=np.int64)}
    names, _ = audio_head_io_names(cfg)
    for name in names[4:]:
        out[name] = rng.standard_normal((batch, cfg.audio_head_heads, position, cfg.audio_head.head_dim)
                                        ).astype(np.float32)
    return out


def export_audio_head(head: AudioHead, tables: nn.ModuleList, cfg: ModelConfig, path: Path,
                      opset: int = 17) -> list[Path]:
    inputs, outputs = audio_head_io_names(cfg)
    example = audio_head_example_inputs(cfg, batch=1, position=2, seed=0)
    args = [torch.from_numpy(example[n]) for n in inputs]
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in ("hidden", "running", "prev_code", "running_out")}
    axes["logits"] = {0: "batch", 1: "classes"}
    axes.update({n: {0: "batch", 2: "depth"} for n in inputs[4:]})
    axes.update({n: {0: "batch", 2: "depth_out"} for n in outputs[2:]})
    return export_module(AudioHeadStep(head, tables), args, path, inputs, outputs, axes, opset)
