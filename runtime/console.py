"""Showing a turn as it happens: text printed as it is generated, audio collected and written."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from bcaudio.runtime.audio_io import save_audio
from bcaudio.runtime.speech_loop import AudioSegment, Event, TextDelta, TurnResult, collect


def stream_to_console(events: Iterator[Event], crossfade: int, rate: int, output_wav: str | Path | None = None,
                      out: TextIO = sys.stdout) -> TurnResult:
    """Print text deltas as they arrive and note each audio segment; write the joined audio if asked."""
    start = time.perf_counter()
    first_audio: float | None = None

    def watch() -> Iterator[Event]:
        nonlocal first_audio
        for event in events:
            if isinstance(event, TextDelta):
                out.write(event.text)
                out.flush()
            elif isinstance(event, AudioSegment) and first_audio is None:
                first_audio = time.perf_counter() - start
            yield event

    result = collect(watch(), crossfade)
    wave = result.waveform(crossfade)
    total = time.perf_counter() - start
    out.write("\n")
    frames = sum(len(s.codes) for s in result.segments)
    seconds = wave.size / rate
    summary = (f"[{len(result.text_ids)} text tokens, {len(result.segments)} audio segment(s), {frames} frames, "
               f"{seconds:.2f} s of audio in {total:.2f} s")
    if first_audio is not None:
        summary += f"; first audio after {first_audio:.2f} s"
    out.write(summary + f"; stop: {result.reason}]\n")
    if output_wav is not None:
        save_audio(output_wav, wave, rate)
        out.write(f"wrote {output_wav}\n")
    return result
