"""A spoken turn as a live session runs it: time to first audio after end of speech, and RTF.

While the user speaks, each prefill chunk is tokenized (with the device profile's tokenizer left
context, as ``bcaudio chat`` does) and prefilled (``start_user_audio`` / ``add_user_audio``), so
at end of speech only the last chunk and the assistant prompt are left.
The clock starts at the end-of-turn decision; the felt figure starts at the last voiced sample.
This is ``Profiler.turn`` with ``live_prefill`` (the profiler
records which stage each graph run belongs to), in a fresh conversation per turn, reduced to the
figures the benchmark reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bcaudio.runtime.profiling.profiler import Profiler


@dataclass
class TurnFigures:
    chunk_ms: int
    input_seconds: float
    first_audio_ms: float | None  # end-of-turn decision -> first audio segment ready to play
    felt_ms: float | None  # last voiced sample of the speech -> first answer sample out of the player
    voice_gap_ms: float  # last voiced sample -> end-of-turn decision (hangover or turn detector)
    ended_by: str
    min_buffer_s: float | None  # least audio queued ahead of the speaker when a later piece arrived
    underrun_ms: float  # the speaker ran dry this long before the answer was done
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
    cores_busy: float | None = None  # CPU time over turn time x the process's cores: near 1 it is compute-bound

    @property
    def rtf(self) -> float | None:
        return self.total_ms / 1000 / self.answer_audio_s if self.answer_audio_s > 0 else None


def incremental_turn(profiler: Profiler, audio16k: np.ndarray) -> TurnFigures:
    """One turn in a fresh conversation on ``profiler``'s open sessions (a ``live_prefill`` profiler)."""
    profiler.new_conversation()
    m = profiler.turn(audio16k, 0)
    return TurnFigures(
        chunk_ms=profiler.profile.generation.prefill_chunk_ms, input_seconds=m.input_seconds,
        first_audio_ms=m.first_audio_ms, felt_ms=m.felt_ms, voice_gap_ms=m.voice_gap_ms,
        ended_by=m.heard.ended_by if m.heard else "", min_buffer_s=m.playback.min_buffer_s if m.playback else None,
        underrun_ms=m.playback.underrun_ms if m.playback else 0.0, total_ms=m.total_ms, answer_audio_s=m.answer_audio_s,
        prefilled_while_speaking=m.context_tokens + m.fed_while_speaking, prefilled_after_speech=m.prefill_tokens,
        audio_frames=m.audio_frames, decode_tokens=m.decode_tokens, stop=m.stop,
        stages_to_first_audio_ms=m.stages_to_first_audio_ms,
        text_tokens_to_first_audio=m.text_tokens_to_first_audio or 0,
        frames_to_first_audio=m.frames_to_first_audio or 0, cores_busy=m.cores_busy)
