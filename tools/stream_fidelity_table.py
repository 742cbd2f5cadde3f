"""How far a segment decoded in windows (``generation.stream``) is from its whole-segment decode: README's table.

The recording is tokenized and its first ``--frames`` codes are decoded as one answer segment,
whole and then window by window as the speech loop streams it, for each chunk and left context.
Reported against the whole decode: the correlation of the 20 ms energy envelopes and the RMS ratio
(content: what tests/test_waveform_parity.py bounds), the waveform SNR (overall and the worst 320 ms
block: sample-wise, which a voiced source's phase drift between renderings pulls below 0 dB); how many
codes the windows decode per code of the segment, the first piece's length, and the time to decode
the first window against the whole segment (flow + vocoder on this machine). The same codes decoded
whole with another noise draw (``--other-seed``), an equally valid rendering, give the scale.

    python tools/stream_fidelity_table.py --model PKG --input speech.wav [--chunks 4,8,12] [--contexts 2,6]
    python tools/stream_fidelity_table.py --model PKG --input speech.wav --schedules "6,16;8,4,1.5,32,3"

``--schedules`` (first,chunk[,growth,cap[,left context]], as in tools/stream_schedule.py) replaces the
chunk x context grid with those schedules.

``--first-steps 3,4`` adds a table for a cheaper first window (``stream_first_flow_steps``): each schedule
streamed with its first window solved in that many Euler steps, against the same schedule at
``--flow-steps``; the first piece (the audio the first window plays) and the whole streamed segment each
against the same samples of the whole-segment decode, with the other noise draw's figures on the same spans.

    python tools/stream_fidelity_table.py --model PKG --input speech.wav --flow-steps 6 --schedules "8,4,1.5,32,3" \
        --first-steps 3,4
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import numpy as np
import soundfile as sf
from stream_schedule import parse_schedule

from bcaudio.config import StreamSettings
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.segment_stream import SegmentStream
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.speech_loop import crossfade_join

BLOCK_S = 0.32


def snr_db(got: np.ndarray, want: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want**2) / max(np.sum((got - want) ** 2), 1e-30)))


def envelope(x: np.ndarray, hop: int) -> np.ndarray:
    n = x.size // hop * hop
    return np.sqrt((x[:n].reshape(-1, hop) ** 2).mean(axis=1))


def content(got: np.ndarray, want: np.ndarray, rate: int) -> str:
    """Envelope (20 ms) correlation, RMS ratio and SNR (overall, worst block) as table cells."""
    block = int(BLOCK_S * rate)
    worst = min(snr_db(got[i:i + block], want[i:i + block]) for i in range(0, want.size - block + 1, block))
    corr = np.corrcoef(envelope(got, rate // 50), envelope(want, rate // 50))[0, 1]
    rms = np.sqrt((got**2).mean() / (want**2).mean())
    return f"{corr:.2f} | {rms:.2f} | {snr_db(got, want):.1f} | {worst:.1f}"


def timed(decode_segment: Callable[..., np.ndarray], log: list[tuple[int, float]]) -> Callable[..., np.ndarray]:
    """Segment 0's window decoder that logs (codes, ms) per window."""

    def decode(window: np.ndarray, first: int, phase: SourcePhase, steps: int | None) -> np.ndarray:
        start = time.perf_counter()
        wave = decode_segment(window, 0, first, phase, steps)
        log.append((len(window), (time.perf_counter() - start) * 1000))
        return wave

    return decode


def envelope_rms(got: np.ndarray, want: np.ndarray, rate: int) -> str:
    """Envelope (20 ms) correlation and RMS ratio as table cells: the figures a span too short for 320 ms blocks
    still has."""
    corr = np.corrcoef(envelope(got, rate // 50), envelope(want, rate // 50))[0, 1]
    return f"{corr:.2f} | {np.sqrt((got**2).mean() / (want**2).mean()):.2f}"


def streamed(decode_segment: Callable[..., np.ndarray], settings: StreamSettings, codes: np.ndarray,
             crossfade: int, cfg: object) -> tuple[list[np.ndarray], list[tuple[int, float]]]:
    """The pieces of ``codes`` streamed as one segment, and (codes, ms) of each window's decode."""
    decoded: list[tuple[int, float]] = []
    stream = SegmentStream(timed(decode_segment, decoded), settings, crossfade, cfg)
    pieces = [w for k in range(1, len(codes) + 1) for _, w in stream.add(codes[:k])]
    return pieces + [w for _, w in stream.finish(codes)], decoded


def first_steps_table(grid: list[tuple[str, StreamSettings]], steps: list[int], flow_steps: int,
                      decode_segment: Callable[..., np.ndarray], codes: np.ndarray, whole: np.ndarray,
                      other: np.ndarray, crossfade: int, cfg: object, rate: int) -> None:
    """The cheaper first window's rows: first piece and whole streamed segment against the whole decode."""
    print("\n| schedule | first window flow steps | first piece: envelope corr | RMS ratio | streamed segment: "
          "envelope corr | RMS ratio | first window decode ms |")
    print("|---|---|---|---|---|---|---|")
    for name, settings in grid:
        label, first_len = name.replace(" | ", ", "), 0
        for n in [flow_steps, *steps]:
            pieces, decoded = streamed(decode_segment, dataclasses.replace(settings, first_flow_steps=n), codes,
                                       crossfade, cfg)
            first_len = pieces[0].size
            got = crossfade_join(pieces, crossfade)
            print(f"| {label} | {n} | {envelope_rms(pieces[0], whole[:first_len], rate)} | "
                  f"{envelope_rms(got, whole, rate)} | {decoded[0][1]:.0f} |")
        print(f"| {label} | another noise draw, whole | {envelope_rms(other[:first_len], whole[:first_len], rate)} | "
              f"{envelope_rms(other, whole, rate)} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model package folder")
    parser.add_argument("--input", required=True, help="a speech recording (any rate; made mono 16 kHz)")
    parser.add_argument("--frames", type=int, default=40, help="codes in the segment (40: 3.2 s)")
    parser.add_argument("--chunks", default="4,8,12,25", help="stream_chunk_frames values")
    parser.add_argument("--contexts", default="2,6", help="left_context_frames values")
    parser.add_argument("--flow-steps", type=int, default=10)
    parser.add_argument("--schedules", help="first,chunk[,growth,cap[,left]];... instead of --chunks x --contexts")
    parser.add_argument("--other-seed", type=int, default=7, help="noise seed of the reference's other draw")
    parser.add_argument("--first-steps", help="first-window flow steps to compare with --flow-steps (e.g. 3,4)")
    args = parser.parse_args()
    assistant = VoiceAssistant(args.model, None, flow_steps=args.flow_steps, log=lambda _: None)
    audio, rate = sf.read(args.input, dtype="float32", always_2d=True)
    codes = assistant.tokenize(assistant.prepare(audio, rate))[:args.frames]
    cfg, backend = assistant.cfg, assistant.backend
    crossfade = cfg.generation.crossfade_samples
    t0 = time.perf_counter()
    whole = backend.decode_segment(codes, 0)
    whole_ms = (time.perf_counter() - t0) * 1000
    other = VoiceAssistant(args.model, None, flow_steps=args.flow_steps, seed=args.other_seed,
                           log=lambda _: None).backend.decode_segment(codes, 0)
    print(f"{len(codes)} codes ({len(codes) * 0.08:.2f} s), {args.flow_steps} flow steps; whole segment decoded in "
          f"{whole_ms:.0f} ms; another noise draw of it (envelope corr | RMS ratio | SNR | worst 320 ms): "
          f"{content(other, whole, assistant.sample_rate)}\n")
    cells = "envelope corr | RMS ratio | SNR dB | worst 320 ms dB"
    holdback = StreamSettings().holdback_samples
    if args.schedules:
        grid = [(spec, parse_schedule(spec, 6, holdback)) for spec in args.schedules.split(";")]
        print(f"| schedule (first, chunk, growth, cap, left) | {cells} | codes decoded per code | "
              "first piece ms | first window decode ms |")
        print("|---|---|---|---|---|---|---|---|")
    else:
        chunks, contexts = (int(c) for c in args.chunks.split(",")), [int(c) for c in args.contexts.split(",")]
        grid = [(f"{chunk} | {left}", StreamSettings(chunk_frames=chunk, left_context_frames=left))
                for chunk in chunks for left in contexts]
        print(f"| chunk frames | left context frames | {cells} | codes decoded per code | "
              "first piece ms | first window decode ms |")
        print("|---|---|---|---|---|---|---|---|---|")
    for name, settings in grid:
        pieces, decoded = streamed(backend.decode_segment, settings, codes, crossfade, cfg)
        got = crossfade_join(pieces, crossfade)
        first_ms = pieces[0].size / assistant.sample_rate * 1000
        print(f"| {name} | {content(got, whole, assistant.sample_rate)} | "
              f"{sum(n for n, _ in decoded) / len(codes):.2f} | {first_ms:.0f} | {decoded[0][1]:.0f} |")
    if args.first_steps:
        first_steps_table(grid, [int(n) for n in args.first_steps.split(",")], args.flow_steps,
                          backend.decode_segment, codes, whole, other, crossfade, cfg, assistant.sample_rate)


if __name__ == "__main__":
    main()
