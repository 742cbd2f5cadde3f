"""A spoken turn as a live session runs it: time to first audio after end of speech, and RTF.

While the user speaks, each prefill chunk is tokenized and prefilled (``start_user_audio`` /
``add_user_audio``), so at end of speech only the last chunk and the assistant prompt are left.
The clock starts at end of speech. The profiler's ``Profiler`` opens the package and records which
stage each graph run belongs to; this module only feeds the turn incrementally instead of at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bcaudio.benchmarks.frame import FRAME_BUDGET_MS
from bcaudio.runtime.profiler import Profiler, stage_sums
from bcaudio.runtime.speech_loop import AudioSegment, TurnEnd


@dataclass
class TurnFigures:
    chunk_ms: int
    input_seconds: float
    first_audio_ms: float | None  # end of speech -> first audio segment ready to play
    total_ms: float  # end of speech -> turn end
    answer_audio_s: float
    prefilled_while_speaking: int  # positions prefilled before end of speech
    prefilled_after_speech: int  # positions left for end of speech (the last chunk and the assistant prompt)
    audio_frames: int
    decode_tokens: int
    stop: str
    stages_to_first_audio_ms: dict[str, float]

    @property
    def rtf(self) -> float | None:
        return self.total_ms / 1000 / self.answer_audio_s if self.answer_audio_s > 0 else None


def _chunks(audio: np.ndarray, chunk_ms: int, rate: int) -> list[np.ndarray]:
    """Prefill chunks of whole audio codes, as the live session cuts them."""
    code = int(rate * FRAME_BUDGET_MS / 1000)
    size = max(1, chunk_ms * rate // 1000 // code) * code
    return [audio[s:s + size] for s in range(0, audio.size, size)]


def incremental_turn(profiler: Profiler, audio16k: np.ndarray, chunk_ms: int) -> TurnFigures:
    """One turn in a fresh conversation on ``profiler``'s open sessions."""
    profiler.new_conversation()
    a, rec = profiler.assistant, profiler.recorder
    rate = a.cfg.frontend.sampling_rate
    audio = a.prepare(audio16k, rate)
    chunks = _chunks(audio, chunk_ms, rate)
    rec.reset()
    a.loop.start_user_audio()
    for chunk in chunks[:-1]:
        a.loop.add_user_audio(a.tokenize(chunk))
    before, prefilled = a.backend.position, rec.prefill_tokens
    start = time.perf_counter()  # end of speech
    tail = chunks[-1]
    if tail.size >= int(rate * FRAME_BUDGET_MS / 1000):  # a shorter tail holds no code
        a.loop.add_user_audio(a.tokenize(tail))
    first_audio, samples, pieces, stop, after = None, 0, 0, "", None
    for event in a.loop.guarded_answer():
        if after is None:  # the first event comes after the prompt's prefill and the first text step
            after = rec.prefill_tokens - prefilled
        if isinstance(event, AudioSegment):
            first_audio = first_audio or time.perf_counter()
            samples, pieces = samples + event.waveform.size, pieces + 1
        elif isinstance(event, TurnEnd):
            stop = event.reason
    end = time.perf_counter()
    crossfade = a.cfg.generation.crossfade_samples * max(0, pieces - 1)
    return TurnFigures(
        chunk_ms=chunk_ms, input_seconds=audio.size / rate,
        first_audio_ms=(first_audio - start) * 1000 if first_audio else None, total_ms=(end - start) * 1000,
        answer_audio_s=max(0, samples - crossfade) / a.sample_rate, prefilled_while_speaking=before,
        prefilled_after_speech=after or 0, audio_frames=rec.frames, decode_tokens=rec.decode_tokens, stop=stop,
        stages_to_first_audio_ms=stage_sums(rec.spans, start, first_audio) if first_audio else {})
