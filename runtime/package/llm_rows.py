"""The fast llm graph's KV cache for several conversations at once: one row of a shared buffer each.

``LlmState`` is one conversation's cache (batch 1). A serving box with several conversations
wants their decode steps as one batch: on a CPU the step streams every weight once whatever the
batch, so four rows cost little more than one. Here each layer's key and value live in one
host buffer of shape (rows, kv, C, D); a conversation owns a row (its positions, its own length),
and ONNX Runtime reads and writes the buffer in place through IO binding by pointer, so a
batched step over rows ``lo .. hi`` binds that slice of the buffer (rows are contiguous in
memory) and GroupQueryAttention writes each row's new position at its own ``seqlens_k``.

Rows stay packed: when a conversation leaves, the last row moves into its place (one copy of
one row), so a step spans only the rows in use. A row inside the span with nothing to feed in
that step gets a dummy position written just past its valid length, where its next feed
overwrites it. Capacity C starts at ``kv_capacity`` and doubles for all rows together (one copy)
when a feed would overflow it, never sized to the whole context up front.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from bcaudio.runtime.package.llm_state import DEFAULT_KV_CAPACITY, bind_with_logits, skips_logits

Observer = Callable[[float, float], None]


@dataclass(eq=False)
class Row:
    """One conversation's place in the buffer: its row index (moves when rows are packed) and length."""

    index: int
    position: int = 0
    open: bool = True


@dataclass
class StepInput:
    """One position for one row in a batched step (``codes`` only at an audio frame)."""

    row: Row
    token: int
    codes: np.ndarray | None = None
    logits: bool = True  # False: this row will not read the step's logits (see LlmState.feed)


class LlmRows:
    """Rows of KV cache on one fast llm session; feeds of one row or batched single-position steps."""

    def __init__(self, session: ort.InferenceSession, kv_heads: int, head_dim: int, num_codebooks: int,
                 kv_capacity: int = DEFAULT_KV_CAPACITY, max_positions: int | None = None,
                 observe: Observer | None = None) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        if "seqlens_k" not in inputs:
            raise ValueError("batched decoding needs the fast llm graph (GroupQueryAttention with a shared "
                             "KV buffer); export the package with `--llm-graph fast`")
        if inputs["past_key.0"].type != "tensor(float)":
            raise ValueError("batched decoding runs on the CPU with an fp32 KV cache; this llm graph's cache is "
                             f"{inputs['past_key.0'].type}")
        self.session, self.observe = session, observe
        self.skips_logits = skips_logits(session)
        self.kv_heads, self.head_dim, self.num_codebooks = kv_heads, head_dim, num_codebooks
        self.past_names = [n for n in inputs if n.startswith("past_")]
        self.present_names = [o.name for o in session.get_outputs() if o.name.startswith("present_")]
        self.max_positions = max_positions
        self.capacity = min(kv_capacity, max_positions or kv_capacity)
        self.rows: list[Row] = []
        self.buffers = self._alloc(1, self.capacity)

    def _alloc(self, rows: int, capacity: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((rows, self.kv_heads, capacity, self.head_dim), np.float32) for n in self.past_names}

    @property
    def row_capacity(self) -> int:
        return next(iter(self.buffers.values())).shape[0]

    # ----- rows -----

    def join(self) -> Row:
        """A new empty row (the buffer grows by doubling its rows when full)."""
        if len(self.rows) == self.row_capacity:
            self._resize(2 * self.row_capacity, self.capacity)
        row = Row(len(self.rows))
        self.rows.append(row)
        return row

    def leave(self, row: Row) -> None:
        """Free ``row``; the last row moves into its place so the rows in use stay packed."""
        if not row.open:
            return
        last = self.rows.pop()
        if last is not row:
            for buf in self.buffers.values():
                buf[row.index, :, :last.position] = buf[last.index, :, :last.position]
            last.index = row.index
            self.rows[row.index] = last
        row.open = False

    def truncate(self, row: Row, position: int) -> None:
        """Keep the first ``position`` positions of ``row`` (the next feed overwrites the rest)."""
        if not 0 <= position <= row.position:
            raise ValueError(f"cannot truncate a cache of {row.position} positions to {position}")
        row.position = position

    def cache(self, row: Row) -> dict[str, np.ndarray]:
        """``row``'s valid positions (batch 1), as ``LlmState.cache`` gives them."""
        return {n: buf[row.index:row.index + 1, :, :row.position].copy() for n, buf in self.buffers.items()}

    def _resize(self, rows: int, capacity: int) -> None:
        grown = self._alloc(rows, capacity)
        keep = max((r.position for r in self.rows), default=0)
        used = len(self.rows)
        for name, buf in self.buffers.items():
            grown[name][:used, :, :keep] = buf[:used, :, :keep]
        self.buffers, self.capacity = grown, capacity

    def _fit(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        if self.max_positions is not None and needed > self.max_positions:
            raise ValueError(f"{needed} positions exceed the model's {self.max_positions}")
        capacity = max(needed, 2 * self.capacity)
        self._resize(self.row_capacity, min(capacity, self.max_positions or capacity))

    # ----- compute -----

    def feed(self, row: Row, ids: Sequence[int], codes: np.ndarray | None = None, logits: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray]:
        """Append positions to one row, alone (a prefill); -> (last logits (V,), last hidden (H,)), the logits
        None with ``logits=False`` (as ``LlmState.feed``)."""
        n = len(ids)
        self._fit(row.position + n)
        codes = (np.zeros((1, n, self.num_codebooks), np.int64) if codes is None
                 else np.asarray(codes, np.int64).reshape(1, n, self.num_codebooks))
        last, hidden = self._run(row.index, row.index + 1, np.asarray(ids, np.int64)[None], codes,
                                 np.array([row.position + n - 1], np.int32), row.position + n, logits)
        row.position += n
        return (last[0] if logits else None), hidden[0, -1]

    def step(self, inputs: Sequence[StepInput]) -> list[tuple[np.ndarray | None, np.ndarray]]:
        """One new position for each of several rows, as one batch over the span of their rows;
        -> (logits (V,), hidden (H,)) per input, in order. The lm_head runs when any input reads its logits
        (its weights are read once for the whole batch); an input that said ``logits=False`` gets None."""
        if len({id(s.row) for s in inputs}) != len(inputs):
            raise ValueError("a batched step feeds each row at most once")
        lo, hi = min(s.row.index for s in inputs), max(s.row.index for s in inputs) + 1
        span = self.rows[lo:hi]
        self._fit(max(r.position for r in span) + 1)
        ids = np.zeros((hi - lo, 1), np.int64)  # rows with nothing to feed write a dummy past their length
        codes = np.zeros((hi - lo, 1, self.num_codebooks), np.int64)
        for s in inputs:
            ids[s.row.index - lo, 0] = s.token
            if s.codes is not None:
                codes[s.row.index - lo, 0] = np.asarray(s.codes, np.int64).reshape(self.num_codebooks)
        seqlens = np.array([r.position for r in span], np.int32)
        logits, hidden = self._run(lo, hi, ids, codes, seqlens, int(seqlens.max()) + 1, any(s.logits for s in inputs))
        out = []
        for s in inputs:
            out.append((logits[s.row.index - lo] if s.logits else None, hidden[s.row.index - lo, -1]))
            s.row.position += 1
        return out

    def _run(self, lo: int, hi: int, ids: np.ndarray, codes: np.ndarray, seqlens_k: np.ndarray, total: int,
             logits: bool) -> tuple[np.ndarray, np.ndarray]:
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("audio_codes", codes)
        binding.bind_cpu_input("seqlens_k", seqlens_k)
        binding.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        if self.skips_logits:
            bind_with_logits(binding, logits)
        for key in ("logits", "hidden_states"):  # first: get_outputs lists outputs in binding order
            binding.bind_output(key, "cpu")
        shape = (hi - lo, self.kv_heads, self.capacity, self.head_dim)
        for past, present in zip(self.past_names, self.present_names, strict=True):
            ptr = self.buffers[past][lo:hi].ctypes.data  # rows lo..hi-1 are one contiguous block
            binding.bind_input(past, "cpu", 0, np.float32, shape, ptr)
            binding.bind_output(present, "cpu", 0, np.float32, shape, ptr)
        start = time.perf_counter()
        self.session.run_with_iobinding(binding)
        if self.observe is not None:
            self.observe(start, time.perf_counter())
        logits, hidden, *_ = binding.get_outputs()
        return logits.numpy(), hidden.numpy()
