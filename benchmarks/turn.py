"""A spoken turn as a live session runs it: time to first audio after end of speech, and RTF.

While the user speaks, each prefill chunk is tokenized (with the device profile's tokenizer left
context, as ``bcaudio chat`` does) and prefilled (``start_user_audio`` / ``add_user_audio``), so
at end of speech only the last chunk and the assistant prompt are left.
The clock starts at end of speech. The profiler's ``Profiler`` opens the package and records which
stage each graph run belongs to; this module only feeds the turn incrementally instead of at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bcaudio.runtime.profiler import Profiler, stage_sums
from bcaudio.runtime.speech_loop import AudioSegment, TurnEnd
from bcaudio.runtime.spoken_input import SpokenInput


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
    text_tokens_to_first_audio: int  # the first text round: the model decides its length
    frames_to_first_audio: int  # the first segment's frames, or the stream chunk when segments are streamed

    @property
    def rtf(self) -> float | None:
        return self.total_ms / 1000 / self.answer_audio_s if self.answer_audio_s > 0 else None


def incremental_turn(profiler: Profiler, audio16k: np.ndarray, chunk_ms: int, left_context_ms: int) -> TurnFigures:
    """One turn in a fresh conversation on ``profiler``'s open sessions."""
    profiler.new_conversation()
    a, rec = profiler.assistant, profiler.recorder
    spoken = SpokenInput(a, audio16k, chunk_ms, left_context_ms)
    rec.reset()
    spoken.while_speaking()
    before, prefilled = a.backend.position, rec.prefill_tokens
    start = time.perf_counter()  # end of speech
    spoken.end_of_speech()
    first_audio, samples, pieces, stop, after = None, 0, 0, "", None
    to_first = (0, 0)
    for event in a.loop.guarded_answer():
        if after is None:  # the first event comes after the prompt's prefill and the first text step
            after = rec.prefill_tokens - prefilled
        if isinstance(event, AudioSegment):
            if first_audio is None:
                first_audio = time.perf_counter()
                to_first = (rec.decode_tokens - rec.frames, rec.frames)  # N text tokens: N - 1 fed + <audiogen_start>
            samples, pieces = samples + event.waveform.size, pieces + 1
        elif isinstance(event, TurnEnd):
            stop = event.reason
    end = time.perf_counter()
    crossfade = a.cfg.generation.crossfade_samples * max(0, pieces - 1)
    return TurnFigures(
        chunk_ms=chunk_ms, input_seconds=spoken.seconds,
        first_audio_ms=(first_audio - start) * 1000 if first_audio else None, total_ms=(end - start) * 1000,
        answer_audio_s=max(0, samples - crossfade) / a.sample_rate, prefilled_while_speaking=before,
        prefilled_after_speech=after or 0, audio_frames=rec.frames, decode_tokens=rec.decode_tokens, stop=stop,
        stages_to_first_audio_ms=stage_sums(rec.spans, start, first_audio) if first_audio else {},
        text_tokens_to_first_audio=to_first[0], frames_to_first_audio=to_first[1])
