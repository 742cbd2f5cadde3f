"""Export of the LLM as one graph for prefill and decode.

I/O contract (B batch, T new positions, P past positions, L layers):

inputs
  input_ids        int64 (B, T)       text ids; ``<audio_pad_baichuan>`` marks an audio frame
  audio_codes      int64 (B, T, K)    codes of audio frames (ignored at text positions)
  position_ids     int64 (B, T)       absolute positions, P .. P+T-1 for a plain continuation
  past_key.{l}     float (B, kv, P, D)
  past_value.{l}   float (B, kv, P, D)
outputs
  logits           float (B, V)       of the last position only
  hidden_states    float (B, T, H)    final-normed; the audio head reads the last one
  present_key.{l}  float (B, kv, P+T, D)  the past with the T new positions appended
  present_value.{l}

Only the length axis of the cache grows; the runtime may keep a preallocated
buffer and pass the first P positions (optimized graphs with a shared past/present
buffer come with the performance work).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.llm import BaichuanLLM
from bcaudio.export.onnx_io import export_module


class _FlatLLM(nn.Module):
    """Flat positional signature: the TorchScript exporter names inputs by position."""

    def __init__(self, llm: BaichuanLLM) -> None:
        super().__init__()
        self.llm = llm

    def forward(self, input_ids: torch.Tensor, audio_codes: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, hidden, presents = self.llm(input_ids, audio_codes, position_ids, pairs)
        return (logits, hidden, *[t for kv in presents for t in kv])


def llm_io_names(cfg: ModelConfig) -> tuple[list[str], list[str]]:
    layers = range(cfg.llm.layers)
    past = [n for i in layers for n in (f"past_key.{i}", f"past_value.{i}")]
    present = [n for i in layers for n in (f"present_key.{i}", f"present_value.{i}")]
    return ["input_ids", "audio_codes", "position_ids", *past], ["logits", "hidden_states", *present]


def llm_example_inputs(cfg: ModelConfig, batch: int, new: int, past: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = cfg.llm
    ids = rng.integers(0, cfg.tokens.eos, (batch, new))
    ids[:, new // 2:] = cfg.tokens.audio_pad  # half text, half audio frames
    codes = np.stack([rng.integers(0, n, (batch, new)) for n in cfg.bridge.codebook_sizes], axis=-1)
    out = {"input_ids": ids.astype(np.int64), "audio_codes": codes.astype(np.int64),
           "position_ids": np.broadcast_to(np.arange(past, past + new), (batch, new)).astype(np.int64).copy()}
    names, _ = llm_io_names(cfg)
    for name in names[3:]:
        out[name] = (rng.standard_normal((batch, c.kv_heads, past, c.head_dim)) * 0.5).astype(np.float32)
    return out


def export_llm(module: BaichuanLLM, cfg: ModelConfig, path: Path, opset: int = 17) -> list[Path]:
    inputs, outputs = llm_io_names(cfg)
    example = llm_example_inputs(cfg, batch=1, new=3, past=2, seed=0)
    args = tuple(torch.from_numpy(example[n]) for n in inputs)
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "new"}, "audio_codes": {0: "batch", 1: "new"},
                                       "position_ids": {0: "batch", 1: "new"}, "logits": {0: "batch"},
                                       "hidden_states": {0: "batch", 1: "new"}}
    axes.update({n: {0: "batch", 2: "past"} for n in inputs[3:]})
    axes.update({n: {0: "batch", 2: "total"} for n in outputs[2:]})
    return export_module(_FlatLLM(module), args, path, inputs, outputs, axes, opset)
