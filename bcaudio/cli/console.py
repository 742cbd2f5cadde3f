"""Showing a turn as it happens: text printed as it is generated, audio collected and written."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from bcaudio.runtime.audio.files import save_audio
from bcaudio.runtime.generation.speech_loop import Event, TextDelta, TurnResult, collect


def stream_to_console(events: Iterator[Event], crossfade: int, rate: int, output_wav: str | Path | None = None,
                      out: TextIO | None = None, stats: TextIO | None = None, audio: bool = True) -> TurnResult:
    """Print text deltas to ``out`` as they arrive; write the joined audio if asked; the turn's numbers go to
    ``stats``, so ``> answer.txt`` holds only the answer. ``audio``: the mode makes speech (it is discarded,
    with a note, when there is no ``output_wav``)."""

    out, stats = out or sys.stdout, stats or sys.stderr  # looked up at the call: a later redirect holds

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
    out.write("\n")
    out.flush()
    stats.write(f"{summary}; stop: {result.reason}]\n")
    if output_wav is not None:
        save_audio(output_wav, wave, rate)
        stats.write(f"wrote {output_wav}\n")
    elif audio and wave.size:
        stats.write(f"note: {wave.size / rate:.2f} s of answer audio discarded; pass --output answer.wav to keep it\n")
    return result
