"""Showing a turn as it happens: text printed as it is generated, audio collected and written."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from bcaudio.runtime.audio.files import save_audio
from bcaudio.runtime.generation.speech_loop import Event, TextDelta, TurnResult, collect


def stream_to_console(events: Iterator[Event], crossfade: int, rate: int, output_wav: str | Path | None = None,
                      out: TextIO | None = None) -> TurnResult:
    """Print text deltas as they arrive; write the joined audio if asked; end with the turn's numbers.

    ``out`` defaults to the ``sys.stdout`` of the call, not of the import, so a redirect made later holds."""
    out = out or sys.stdout

    def echo() -> Iterator[Event]:
        for event in events:
            if isinstance(event, TextDelta):
                out.write(event.text)
                out.flush()
            yield event

    result = collect(echo(), crossfade)
    wave = result.waveform(crossfade)
    frames = sum(len(s.codes) for s in result.segments)
    summary = (f"[{len(result.text_ids)} text tokens, {len(result.segment_codes())} audio segment(s), {frames} frames, "
               f"{wave.size / rate:.2f} s of audio in {result.timings.get('total', 0.0):.2f} s")
    if "first_audio" in result.timings:
        summary += f"; first audio after {result.timings['first_audio']:.2f} s"
    out.write(f"\n{summary}; stop: {result.reason}]\n")
    if output_wav is not None:
        save_audio(output_wav, wave, rate)
        out.write(f"wrote {output_wav}\n")
    return result
