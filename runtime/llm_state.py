"""The LLM graph and its KV cache as one object: what the speech loop, the accuracy report and the benchmarks drive.

Keeping the cache layout here means the callers never learn which llm graph a package holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

Observer = Callable[[float, float], None]


class LlmState:
    """Batch-1 conversation state of one llm session: the KV cache and the position counter.

    With ``io_binding`` the cache lives on ``device`` as OrtValues and each step's present is bound
    straight back as the next past: it never visits the host (the default on CUDA).
    """

    def __init__(self, session: ort.InferenceSession, kv_heads: int, head_dim: int, num_codebooks: int,
                 device: str = "cpu", io_binding: bool = False, observe: Observer | None = None) -> None:
        self.session, self.device, self.io_binding = session, device, io_binding
        self.kv_heads, self.head_dim, self.num_codebooks = kv_heads, head_dim, num_codebooks
        self.past_names = [i.name for i in session.get_inputs() if i.name.startswith("past_")]
        self.present_names = [o.name for o in session.get_outputs() if o.name.startswith("present_")]
        self.observe = observe
        self.reset()

    def _empty(self, length: int = 0) -> np.ndarray:
        return np.zeros((1, self.kv_heads, length, self.head_dim), dtype=np.float32)

    def reset(self) -> None:
        self.past = {n: self._to_device(self._empty()) if self.io_binding else self._empty() for n in self.past_names}
        self.position = 0

    def _to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def truncate(self, position: int) -> None:
        """Keep the first ``position`` positions: barge-in forgets what was never played.

        A cache bound on the device makes one host round trip; an interruption is rare enough for that.
        """
        if not 0 <= position <= self.position:
            raise ValueError(f"cannot truncate a cache of {self.position} positions to {position}")
        if self.io_binding:
            self.past = {n: self._to_device(v.numpy()[:, :, :position]) for n, v in self.past.items()}
        else:
            self.past = {n: np.ascontiguousarray(v[:, :, :position]) for n, v in self.past.items()}
        self.position = position

    def feed(self, ids: Sequence[int], codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Append tokens (audio positions carry their codes); returns the last position's logits and hidden state."""
        n = len(ids)
        feeds = {"input_ids": np.asarray(ids, dtype=np.int64)[None],
                 "audio_codes": (np.zeros((1, n, self.num_codebooks), np.int64) if codes is None
                                 else np.asarray(codes, dtype=np.int64).reshape(1, n, self.num_codebooks)),
                 "position_ids": np.arange(self.position, self.position + n, dtype=np.int64)[None]}
        start = time.perf_counter()
        if self.io_binding:
            logits, hidden = self._run_bound(feeds)
        else:
            logits, hidden, *values = self.session.run(None, {**feeds, **self.past})
            self.past = dict(zip(self.past_names, values, strict=True))
        if self.observe is not None:
            self.observe(start, time.perf_counter())
        self.position += n
        return logits[0], hidden[0, -1]

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        binding = self.session.io_binding()
        for key, value in feeds.items():
            binding.bind_cpu_input(key, value)
        for key, value in self.past.items():
            binding.bind_ortvalue_input(key, value)
        for key in ("logits", "hidden_states"):
            binding.bind_output(key, "cpu")
        for key in self.present_names:
            binding.bind_output(key, self.device)
        self.session.run_with_iobinding(binding)
        logits, hidden, *presents = binding.get_outputs()
        self.past = dict(zip(self.past_names, presents, strict=True))
        return logits.numpy(), hidden.numpy()

    def cache(self) -> dict[str, np.ndarray]:
        """The cache's valid positions on the host."""
        return {n: np.asarray(v.numpy() if self.io_binding else v)[:, :, :self.position] for n, v in self.past.items()}
