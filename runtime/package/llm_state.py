"""The LLM graph and its KV cache as one object: what the speech loop, the accuracy report and the benchmarks drive.

Keeping the cache layout here means the callers never learn which llm graph a package holds:
- the *plain* graph (export_llm.py) takes the past and returns past + new as a fresh present;
- the *fast* graph (fast_llm.py, GroupQueryAttention) reads and writes one preallocated buffer per
  layer bound as both past and present. The buffer starts at ``kv_capacity`` positions and doubles
  when a feed would overflow it (one copy, log2 times per conversation), so memory follows the
  conversation instead of the model's maximum context.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

Observer = Callable[[float, float], None]

DEFAULT_KV_CAPACITY = 256
WITH_LOGITS = "with_logits"  # the fast llm graph's switch for the lm_head (export/fast_llm.py)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def skips_logits(session: ort.InferenceSession) -> bool:
    """Whether the graph takes ``with_logits``: graphs exported before it compute the logits always. ORT lists an
    input with a default among the overridable initializers, not the inputs."""
    return WITH_LOGITS in {i.name for i in session.get_overridable_initializers()}


def bind_with_logits(binding: ort.IOBinding, logits: bool) -> None:
    """Bind ``with_logits``: ``bind_cpu_input`` looks a name up among the inputs without a default only."""
    binding.bind_ortvalue_input(WITH_LOGITS, ort.OrtValue.ortvalue_from_numpy(np.array(logits)))


class LlmState:
    """Batch-1 conversation state of one llm session: the KV cache and the position counter.

    With ``io_binding`` the cache lives on ``device`` as OrtValues and each step's present is bound
    straight back as the next past: it never visits the host (the default on CUDA).
    """

    def __init__(self, session: ort.InferenceSession, kv_heads: int, head_dim: int, num_codebooks: int,
                 device: str = "cpu", io_binding: bool = False, observe: Observer | None = None,
                 kv_capacity: int = DEFAULT_KV_CAPACITY, max_positions: int | None = None) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        self.session, self.device = session, device
        self.shared = "seqlens_k" in inputs
        self.skips_logits = skips_logits(session)
        self.io_binding = io_binding or self.shared  # the shared buffer only exists as a bound OrtValue
        self.kv_heads, self.head_dim, self.num_codebooks = kv_heads, head_dim, num_codebooks
        self.past_names = [n for n in inputs if n.startswith("past_")]
        self.present_names = [o.name for o in session.get_outputs() if o.name.startswith("present_")]
        self.dtype = _DTYPES[inputs[self.past_names[0]].type]
        self.observe = observe
        if kv_capacity < 1:
            raise ValueError(f"kv_capacity must be >= 1, got {kv_capacity}")
        self.initial_capacity, self.max_positions = kv_capacity, max_positions
        self.reset()

    def _empty(self, length: int = 0) -> np.ndarray:
        return np.zeros((1, self.kv_heads, length, self.head_dim), dtype=self.dtype)

    def reset(self) -> None:
        self.capacity = min(self.initial_capacity, self.max_positions or self.initial_capacity) if self.shared else 0
        self.past = {n: self._to_device(self._empty(self.capacity)) if self.io_binding else self._empty()
                     for n in self.past_names}
        self.position = 0

    def _grow(self, needed: int) -> None:
        """Reallocate the shared buffers to hold ``needed`` positions, keeping the valid ones."""
        if self.max_positions is not None and needed > self.max_positions:
            raise ValueError(f"{needed} positions exceed the model's {self.max_positions}")
        capacity = max(needed, 2 * self.capacity)
        if self.max_positions is not None:
            capacity = min(capacity, self.max_positions)
        grown = {}
        for name, value in self.past.items():
            array = self._empty(capacity)
            array[:, :, :self.position] = value.numpy()[:, :, :self.position]
            grown[name] = self._to_device(array)
        self.past, self.capacity = grown, capacity

    def _to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def truncate(self, position: int) -> None:
        """Keep the first ``position`` positions: barge-in forgets what was never played.

        A shared buffer needs nothing (the next feed overwrites what lies past ``position``); a plain
        cache bound on the device makes one host round trip, and an interruption is rare enough for that.
        """
        if not 0 <= position <= self.position:
            raise ValueError(f"cannot truncate a cache of {self.position} positions to {position}")
        if self.shared:
            self.position = position
            return
        if self.io_binding:
            self.past = {n: self._to_device(v.numpy()[:, :, :position]) for n, v in self.past.items()}
        else:
            self.past = {n: np.ascontiguousarray(v[:, :, :position]) for n, v in self.past.items()}
        self.position = position

    def feed(self, ids: Sequence[int], codes: np.ndarray | None = None, logits: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray]:
        """Append tokens (audio positions carry their codes); returns the last position's logits and hidden state.

        ``logits=False``: the caller will not read them, so a graph with ``with_logits`` skips the lm_head;
        None in their place on every graph, so a wrong read fails the same way whichever graph runs."""
        n = len(ids)
        feeds = {"input_ids": np.asarray(ids, dtype=np.int64)[None],
                 "audio_codes": (np.zeros((1, n, self.num_codebooks), np.int64) if codes is None
                                 else np.asarray(codes, dtype=np.int64).reshape(1, n, self.num_codebooks))}
        if self.skips_logits:
            feeds[WITH_LOGITS] = np.array(logits)
        if self.shared:
            if self.position + n > self.capacity:
                self._grow(self.position + n)
            feeds["seqlens_k"] = np.array([self.position + n - 1], dtype=np.int32)
            feeds["total_sequence_length"] = np.array(self.position + n, dtype=np.int32)
        else:
            feeds["position_ids"] = np.arange(self.position, self.position + n, dtype=np.int64)[None]
        start = time.perf_counter()
        if self.io_binding:
            last, hidden = self._run_bound(feeds)
        else:
            last, hidden, *values = self.session.run(None, {**feeds, **self.past})
            self.past = dict(zip(self.past_names, values, strict=True))
        if self.observe is not None:
            self.observe(start, time.perf_counter())
        self.position += n
        return (last[0] if logits else None), hidden[0, -1]

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        binding = self.session.io_binding()
        for key, value in feeds.items():
            if key == WITH_LOGITS:
                bind_with_logits(binding, bool(value))
            else:
                binding.bind_cpu_input(key, value)
        for key, value in self.past.items():
            binding.bind_ortvalue_input(key, value)
        for key in ("logits", "hidden_states"):
            binding.bind_output(key, "cpu")
        for past, present in zip(self.past_names, self.present_names, strict=True):
            if self.shared:
                binding.bind_ortvalue_output(present, self.past[past])
            else:
                binding.bind_output(present, self.device)
        self.session.run_with_iobinding(binding)
        values, hidden, *presents = binding.get_outputs()
        if not self.shared:
            self.past = dict(zip(self.past_names, presents, strict=True))
        return values.numpy(), hidden.numpy()

    def cache(self) -> dict[str, np.ndarray]:
        """The cache's valid positions on the host."""
        return {n: np.asarray(v.numpy() if self.io_binding else v)[:, :, :self.position] for n, v in self.past.items()}
