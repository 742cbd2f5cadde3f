"""Tokenizing an utterance while it is spoken: each chunk with some of the audio before it as left context.

The audio tokenizer's encoder attends over its whole input and pads at its edges, so a chunk
tokenized alone gives codes unlike those of the same audio inside the whole utterance. Giving
each chunk the preceding ``left_context`` samples and keeping only the codes of the new audio
brings them closer (README, "Live conversation", has the measured table).

Alignment: one code is 1280 samples (80 ms: 8 mel frames of 160 samples, 4 encoder frames at
stride 2, 4 pooled into one code), and a window of ``n`` samples gives ``token_frames(n)`` codes,
the i-th covering samples [1280 i, 1280 (i + 1)). With a context of whole codes, the window
``context + chunk`` gives the context's codes first and then exactly the codes of the chunk, in
the same positions as in the whole utterance; chunks are whole codes too, except the last one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bcaudio.config import ModelConfig
from bcaudio.runtime.generation.audio_chunks import token_frames

CODE_SAMPLES = 1280  # 16 kHz samples per audio code (12.5 Hz)


def whole_codes(ms: int, rate: int = 16000, at_least: int = 0) -> int:
    """``ms`` of audio rounded down to whole codes, in samples (``at_least`` codes)."""
    return max(at_least, ms * rate // 1000 // CODE_SAMPLES) * CODE_SAMPLES


class IncrementalTokenizer:
    """Codes of an utterance fed chunk by chunk; ``push`` returns the codes of the new audio only."""

    def __init__(self, tokenize: Callable[[np.ndarray], np.ndarray], cfg: ModelConfig, left_context: int) -> None:
        if left_context % CODE_SAMPLES:
            raise ValueError(f"left context must be whole codes ({CODE_SAMPLES} samples), got {left_context}")
        self.tokenize, self.cfg, self.left_context = tokenize, cfg, left_context
        self.reset()

    def reset(self) -> None:
        """A new utterance: no context."""
        self._context = np.zeros(0, dtype=np.float32)
        self._ended = False

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """(frames, K) codes of ``chunk``; every chunk but an utterance's last must be whole codes."""
        if self._ended:
            raise ValueError("a chunk that is not whole codes ends the utterance; reset() before the next one")
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self._ended = chunk.size % CODE_SAMPLES != 0
        window = np.concatenate([self._context, chunk])
        skip = self._context.size // CODE_SAMPLES
        self._context = window[max(0, window.size - self.left_context):] if self.left_context else window[:0]
        if token_frames(window.size, self.cfg) <= skip:
            return np.zeros((0, self.cfg.bridge.num_codebooks), dtype=np.int64)
        return self.tokenize(window)[skip:]


def tokenize_in_chunks(tokenize: Callable[[np.ndarray], np.ndarray], cfg: ModelConfig, audio: np.ndarray,
                       chunk: int, left_context: int) -> np.ndarray:
    """All codes of ``audio`` cut into ``chunk``-sample pieces, as the live path makes them."""
    tokens = IncrementalTokenizer(tokenize, cfg, left_context)
    pieces = [tokens.push(audio[i:i + chunk]) for i in range(0, audio.size, chunk)]
    return np.concatenate(pieces)
