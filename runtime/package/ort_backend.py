"""The model package on ONNX Runtime as a backend of the shared generation loop."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from bcaudio.runtime.generation.audio_chunks import chunk_audio, token_frames
from bcaudio.runtime.generation.flow_solver import euler_cfg_solve, onnx_cfg_pair
from bcaudio.runtime.generation.noise import NoiseSource
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.speech_loop import ChooseCode
from bcaudio.runtime.package.llm_state import LlmState
from bcaudio.runtime.package.sessions import PackageSessions


def _empty_cache(names: Sequence[str], heads: int, head_dim: int) -> dict[str, np.ndarray]:
    return {n: np.zeros((1, heads, 0, head_dim), dtype=np.float32) for n in names}


class OrtBackend:
    """Batch-1 conversation state: the LLM (its KV cache, see LlmState) and the other graphs' noise."""

    def __init__(self, sessions: PackageSessions, seed: int = 0, flow_steps: int | None = None,
                 io_binding: bool | None = None) -> None:
        self.s, self.cfg = sessions, sessions.cfg
        self.io_binding = sessions.device == "cuda" if io_binding is None else io_binding
        self.llm = LlmState(sessions["llm"], self.cfg.llm.kv_heads, self.cfg.llm.head_dim,
                            self.cfg.bridge.num_codebooks, sessions.device, self.io_binding,
                            observe=lambda start, end: sessions.notify("llm", start, end),
                            max_positions=self.cfg.llm.max_position_embeddings)
        if sessions.device == "cuda" and self.llm.shared and self.llm.dtype == np.float32:
            sessions.log("warning: ONNX Runtime's CUDA GroupQueryAttention runs fp16/bf16 only, so this fp32 llm "
                         "graph's attention falls back to the CPU; for CUDA quantize with `--recipe fp16` or export "
                         "with `--llm-graph plain`")
        self.noise = NoiseSource(self.cfg, seed)
        self.flow_steps = flow_steps or self.cfg.flow.diffusion_steps
        self._decode_options = ort.RunOptions()  # what a decode in flight on another thread runs under

    @functools.cached_property
    def head_past_names(self) -> list[str]:
        """The depth cache's input names (looked up on first use: a text-only package has no audio head)."""
        return [i.name for i in self.s["audio_head"].get_inputs() if i.name.startswith("past_")]

    @property
    def position(self) -> int:
        return self.llm.position

    @property
    def past(self) -> dict[str, np.ndarray]:
        """The valid part of the KV cache on the host (for tests and debugging)."""
        return self.llm.cache()

    def reset(self) -> None:
        self.llm.reset()

    def truncate(self, position: int) -> None:
        self.llm.truncate(position)

    def feed(self, ids: Sequence[int], codes: np.ndarray | None = None, logits: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray]:
        return self.llm.feed(ids, codes, logits)

    def tokenize(self, audio16k: np.ndarray) -> np.ndarray:
        return tokenize_audio(self.s, audio16k)

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

    def decode_segment(self, codes: np.ndarray, segment: int, first_code: int = 0,
                       phase: SourcePhase | None = None, flow_steps: int | None = None) -> np.ndarray:
        return decode_window(self.s, self.noise, flow_steps or self.flow_steps, codes, segment, first_code, phase,
                             self._decode_options)

    def cancel_decode(self) -> None:
        """Stop a decode running on another thread (``SegmentStream``'s worker) at its next graph node: a
        barge-in stops it with the llm. Decodes after this one run as usual. A backend with this method
        may decode beside its own llm and head steps."""
        options, self._decode_options = self._decode_options, ort.RunOptions()
        options.terminate = True


def tokenize_audio(sessions: PackageSessions, audio16k: np.ndarray) -> np.ndarray:
    """The audio tokenizer's codes of 16 kHz audio, in <= 30 s chunks; shared by every backend on a package."""
    cfg = sessions.cfg
    chunks = [c for c in chunk_audio(audio16k, cfg.frontend) if token_frames(c.size, cfg) > 0]
    codes = [sessions.run("audio_tokenizer", {"waveform": c[None]})[0][0] for c in chunks]
    return np.concatenate(codes) if codes else np.zeros((0, cfg.bridge.num_codebooks), np.int64)


def decode_window(sessions: PackageSessions, noise: NoiseSource, flow_steps: int, codes: np.ndarray, segment: int,
                  first_code: int = 0, phase: SourcePhase | None = None,
                  options: ort.RunOptions | None = None) -> np.ndarray:
    """Codes -> 24 kHz waveform: flow pre-net, the Euler/CFG solve, the vocoder (``Backend.decode_segment``)."""
    cfg = sessions.cfg
    (mu,) = sessions.run("flow_prenet", {"codes": np.asarray(codes, dtype=np.int64)[None]}, options=options)
    z, source = noise.window(segment, first_code, len(codes))
    mask = np.ones((1, 1, mu.shape[-1]), dtype=np.float32)
    estimator = onnx_cfg_pair(lambda feeds: sessions.run("flow_estimator", feeds, options=options)[0])
    mel = euler_cfg_solve(estimator, z, mu, mask, flow_steps, cfg.flow.cfg_rate)
    first_frame = first_code * cfg.bridge.avg_pooler
    track = phase or SourcePhase(cfg.vocoder.nb_harmonics + 1)
    wave, frame_phase = sessions.run("vocoder", {
        "mel": mel.astype(np.float32), "noise": source, "harmonic_phase": noise.phases(segment),
        **track.feeds(first_frame)}, options=options)
    track.record(first_frame, frame_phase[0])
    return wave[0]
