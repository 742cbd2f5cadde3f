"""The model package on ONNX Runtime as a backend of the shared generation loop."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from bcaudio.runtime.flow_solver import euler_cfg_solve, onnx_cfg_pair
from bcaudio.runtime.noise import NoiseSource
from bcaudio.runtime.sessions import PackageSessions
from bcaudio.runtime.speech_loop import ChooseCode


def _empty_cache(names: Sequence[str], heads: int, head_dim: int) -> dict[str, np.ndarray]:
    return {n: np.zeros((1, heads, 0, head_dim), dtype=np.float32) for n in names}


class OrtBackend:
    """Batch-1 conversation state: the LLM KV cache and the position counter.

    With IO binding (the default on CUDA) the cache lives on the device as OrtValues and each
    step's present is bound straight back as the next past: it never visits the host.
    """

    def __init__(self, sessions: PackageSessions, seed: int = 0, flow_steps: int | None = None,
                 io_binding: bool | None = None) -> None:
        self.s, self.cfg = sessions, sessions.cfg
        self.io_binding = sessions.device == "cuda" if io_binding is None else io_binding
        self.llm_past_names = [i.name for i in sessions["llm"].get_inputs() if i.name.startswith("past_")]
        self.llm_present_names = [o.name for o in sessions["llm"].get_outputs() if o.name.startswith("present_")]
        self.head_past_names = [i.name for i in sessions["audio_head"].get_inputs() if i.name.startswith("past_")]
        self.reset()
        self.noise = NoiseSource(self.cfg, seed)
        self.flow_steps = flow_steps or self.cfg.flow.diffusion_steps

    def reset(self) -> None:
        shape = (1, self.cfg.llm.kv_heads, 0, self.cfg.llm.head_dim)
        self.past = ({n: self.s.empty_on_device(shape) for n in self.llm_past_names} if self.io_binding
                     else _empty_cache(self.llm_past_names, self.cfg.llm.kv_heads, self.cfg.llm.head_dim))
        self.position = 0

    def truncate(self, position: int) -> None:
        """Keep the first ``position`` positions of the KV cache: barge-in forgets what was never played.

        A cache bound on the device makes one host round trip; an interruption is rare enough for that.
        """
        if not 0 <= position <= self.position:
            raise ValueError(f"cannot truncate a cache of {self.position} positions to {position}")
        if self.io_binding:
            self.past = {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, :position]),
                                                             self.s.device, 0) for n, v in self.past.items()}
        else:
            self.past = {n: np.ascontiguousarray(v[:, :, :position]) for n, v in self.past.items()}
        self.position = position

    def feed(self, ids: Sequence[int], codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        n = len(ids)
        k = self.cfg.bridge.num_codebooks
        feeds = {"input_ids": np.asarray(ids, dtype=np.int64)[None],
                 "audio_codes": (np.zeros((1, n, k), np.int64) if codes is None
                                 else np.asarray(codes, dtype=np.int64)[None]),
                 "position_ids": np.arange(self.position, self.position + n, dtype=np.int64)[None]}
        if self.io_binding:
            (logits, hidden), presents = self.s.run_bound("llm", feeds, self.past, ["logits", "hidden_states"],
                                                          self.llm_present_names)
            self.past = {p: presents[q] for p, q in zip(self.llm_past_names, self.llm_present_names, strict=True)}
        else:
            logits, hidden, *values = self.s.run("llm", {**feeds, **self.past})
            self.past = dict(zip(self.llm_past_names, values, strict=True))
        self.position += n
        return logits[0], hidden[0, -1]

    def audio_frame(self, hidden: np.ndarray, choose: ChooseCode) -> list[int]:
        h = np.asarray(hidden, dtype=np.float32)[None]
        running = np.zeros_like(h)
        prev = np.zeros(1, dtype=np.int64)
        past = _empty_cache(self.head_past_names, self.cfg.audio_head_heads, self.cfg.audio_head.head_dim)
        codes = []
        for pos in range(self.cfg.bridge.num_codebooks):
            logits, running, *presents = self.s.run("audio_head", {
                "hidden": h, "running": running, "prev_code": prev, "position": np.array([pos], np.int64), **past})
            past = dict(zip(self.head_past_names, presents, strict=True))
            code = choose(pos, logits[0])
            codes.append(code)
            prev = np.array([code], dtype=np.int64)
        return codes

    def decode_segment(self, codes: np.ndarray) -> np.ndarray:
        (mu,) = self.s.run("flow_prenet", {"codes": np.asarray(codes, dtype=np.int64)[None]})
        z, source = self.noise.next_segment(mu.shape[-1])
        mask = np.ones((1, 1, mu.shape[-1]), dtype=np.float32)
        estimator = onnx_cfg_pair(lambda feeds: self.s.run("flow_estimator", feeds)[0])
        mel = euler_cfg_solve(estimator, z, mu, mask, self.flow_steps, self.cfg.flow.cfg_rate)
        (wave,) = self.s.run("vocoder", {"mel": mel.astype(np.float32), "noise": source})
        return wave[0]
