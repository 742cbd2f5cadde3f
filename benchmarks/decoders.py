"""One LLM, three implementations, one interface: what the timing loop drives.

Each decoder holds a batch-1 KV cache and exposes ``reset`` / ``feed`` / ``truncate``, so every
variant is timed by the same loop doing the same work: prefill ``n`` positions, then decode one
position at a time at a fixed context (``truncate`` puts the cache back between steps, outside
the timed call). bcaudio's graphs are driven through ``LlmState``, the runtime's own owner of the
llm graph and its cache, so the timing follows whatever cache layout a package's graph has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from bcaudio.runtime.package.ort_backend import OrtBackend
from bcaudio.runtime.package.sessions import PackageSessions, SessionSettings


class Decoder(Protocol):
    name: str

    def reset(self) -> None: ...

    def feed(self, ids: np.ndarray) -> np.ndarray:
        """Append text positions; -> the last position's logits (vocab,)."""
        ...

    def truncate(self, position: int) -> None: ...


def session_options(threads: int) -> ort.SessionOptions:
    """The options bcaudio's sessions use (all graph optimizations), with a fixed thread count."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return opts


class PackageDecoder:
    """A bcaudio package's llm graph through ``OrtBackend`` / ``LlmState`` (which also owns the audio head)."""

    def __init__(self, name: str, package: Path, threads: int) -> None:
        self.name = name
        # a graph timed alone spins like optimum's session does (onnxruntime's default)
        self.sessions = PackageSessions(package, SessionSettings(intra_op_threads=threads, spin_wait=True),
                                        graphs=("llm", "audio_head"), log=lambda _: None)
        self.backend = OrtBackend(self.sessions)
        self.llm = self.backend.llm
        self.hidden = np.zeros(self.sessions.cfg.llm.hidden_size, np.float32)  # the last position's, for the head

    @property
    def layout(self) -> str:
        return "fast (shared KV buffer)" if self.llm.shared else "plain (concatenated KV)"

    def reset(self) -> None:
        self.llm.reset()

    def feed(self, ids: np.ndarray) -> np.ndarray:
        logits, self.hidden = self.llm.feed([int(i) for i in ids])
        return logits

    def truncate(self, position: int) -> None:
        self.llm.truncate(position)


class OptimumDecoder:
    """optimum-onnx's Qwen2 graph in its own session, with its own ``past_key_values.N.*`` cache (batch 1)."""

    def __init__(self, name: str, graph: Path, threads: int) -> None:
        self.name = name
        self.session = ort.InferenceSession(str(graph), session_options(threads), providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.present_names = [o.name for o in self.session.get_outputs() if o.name.startswith("present.")]
        self.kv_heads, self.head_dim = inputs[self.past_names[0]].shape[1], inputs[self.past_names[0]].shape[3]
        self.reset()

    def reset(self) -> None:
        self.past = {n: np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past_names}
        self.position = 0

    def feed(self, ids: np.ndarray) -> np.ndarray:
        n = len(ids)
        feeds = {"input_ids": np.asarray(ids, np.int64)[None],
                 "attention_mask": np.ones((1, self.position + n), np.int64),
                 "position_ids": np.arange(self.position, self.position + n, dtype=np.int64)[None], **self.past}
        logits, *presents = self.session.run(["logits", *self.present_names], feeds)
        self.past = dict(zip(self.past_names, presents, strict=True))
        self.position += n
        return logits[0, -1]

    def truncate(self, position: int) -> None:
        self.past = {k: np.ascontiguousarray(v[:, :, :position]) for k, v in self.past.items()}
        self.position = position


class TorchDecoder:
    """The torch reference LLM (export/llm.py) in eager mode, fp32, on ``threads`` threads."""

    def __init__(self, name: str, llm: object, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.name, self.llm, self.torch = name, llm, torch
        self.k = len(llm.model.audio_embed_layers)
        self.reset()

    def reset(self) -> None:
        self.cache = self.llm.empty_cache(1)
        self.position = 0

    def feed(self, ids: np.ndarray) -> np.ndarray:
        torch, n = self.torch, len(ids)
        with torch.inference_mode():
            ids_t = torch.as_tensor(np.asarray(ids, np.int64))[None]
            pos = torch.arange(self.position, self.position + n)[None]
            logits, _, self.cache = self.llm(ids_t, torch.zeros(1, n, self.k, dtype=torch.long), pos, self.cache)
        self.position += n
        return logits[0].numpy()

    def truncate(self, position: int) -> None:
        self.cache = [(k[:, :, :position], v[:, :, :position]) for k, v in self.cache]
        self.position = position
