"""A recorded utterance fed to a conversation the way ``bcaudio chat`` feeds a live one.

While the user speaks, the live session tokenizes each prefill chunk (with some audio before it as
left context) and prefills it, so at end of speech only the last chunk and the assistant prompt
remain. The profiler and the benchmark replay a recording the same way, so their time to first
audio, measured from end of speech, is the chat's.
"""

from __future__ import annotations

import time

import numpy as np

from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.live.incremental_tokens import IncrementalTokenizer, whole_codes


class SpokenInput:
    """``while_speaking()`` feeds every chunk but the last; ``end_of_speech()`` feeds the last one."""

    def __init__(self, assistant: VoiceAssistant, audio16k: np.ndarray, chunk_ms: int, left_context_ms: int) -> None:
        self.assistant = assistant
        rate = assistant.cfg.frontend.sampling_rate
        self.audio = assistant.prepare(audio16k, rate)
        size = whole_codes(chunk_ms, rate, at_least=1)
        self.chunks = [self.audio[s:s + size] for s in range(0, self.audio.size, size)]
        self.tokens = IncrementalTokenizer(assistant.tokenize, assistant.cfg, whole_codes(left_context_ms, rate))
        self.fed = 0  # positions fed while speaking
        self.chunk_times: list[tuple[float, float]] = []  # perf_counter start and end of each chunk fed while speaking
        self.chunk_samples = size

    @property
    def seconds(self) -> float:
        return self.audio.size / self.assistant.cfg.frontend.sampling_rate

    @property
    def last_window_seconds(self) -> float:
        """Audio the tokenizer runs on at end of speech: the last chunk and its left context."""
        last = self.chunks[-1].size
        window = last + min(self.audio.size - last, self.tokens.left_context)
        return window / self.assistant.cfg.frontend.sampling_rate

    def while_speaking(self) -> None:
        loop = self.assistant.loop
        before = len(loop.context)
        loop.start_user_audio()
        for chunk in self.chunks[:-1]:
            t0 = time.perf_counter()
            loop.add_user_audio(self.tokens.push(chunk))
            self.chunk_times.append((t0, time.perf_counter()))
        self.fed = len(loop.context) - before

    def end_of_speech(self) -> None:
        self.assistant.loop.add_user_audio(self.tokens.push(self.chunks[-1]))
