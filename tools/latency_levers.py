"""Decode-stage levers measured side by side: felt latency, first audio, RTF and the least playback buffer.

Every variant is a change of the device profile's generation settings (first streamed window, later
windows, flow steps, the first window's flow steps, the decode overlapped with the next frames, the live
prefill's chunk and the tokenizer's left context: ``prefill`` / ``lctx`` in ms, and ``seg``: every answer
segment that many frames, a chosen clause length, which ``--segment-frames`` sets for all variants)
or of its session threads
(``threads``: the llm and audio head's, ``dthreads``: the flow and vocoder's, ``hthreads``: the audio head's;
each distinct set opens the package once more): turns run round-robin, the order rotated every round,
each in a fresh conversation (``benchmarks.turn.incremental_turn``: live prefill, the profile's
endpointing), so the load of a shared machine falls on all variants alike.
Medians per variant and their ratios to the first. A ``left`` below the hold-back's reach (3 codes) decodes
the same windows as 3: such a pair is an A/A test of the box's spread (docs/benchmarks.md, Session 10).

    python tools/latency_levers.py --model PKG [--device-profile cpu-2core] [--input speech.wav] [--rounds 3] \
        [--variants "base;first=4;chunk=25;steps=4;fsteps=3;first=4,chunk=4,growth=2,max=32;overlap=1,threads=1"]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from bcaudio.benchmarks.turn import TurnFigures, incremental_turn
from bcaudio.runtime.package.profiles import resolve_profile
from bcaudio.runtime.profiling.profiler import Profiler, speech_input, with_segment_frames

KEYS = {"first": "stream_first_chunk_frames", "chunk": "stream_chunk_frames", "left": "stream_left_context_frames",
        "steps": "flow_steps", "growth": "stream_chunk_growth", "max": "stream_max_chunk_frames",
        "overlap": "stream_overlap_decode", "prefill": "prefill_chunk_ms", "lctx": "tokenize_left_context_ms",
        "fsteps": "stream_first_flow_steps", "seg": "segment_frames"}
SESSION_KEYS = {"threads": "intra_op_threads", "dthreads": "decoder_threads", "hthreads": "head_threads"}


def parse_variant(spec: str) -> tuple[dict[str, float], dict[str, int]]:
    """``base`` or ``first=4,chunk=4,growth=2,max=32,overlap=1,threads=1``: (generation, session) settings over the
    profile's."""
    gen: dict[str, float] = {}
    session: dict[str, int] = {}
    for part in [] if spec == "base" else spec.split(","):
        key, value = part.split("=")
        if key in SESSION_KEYS:
            session[SESSION_KEYS[key]] = int(value)
        else:
            gen[KEYS[key]] = float(value) if key == "growth" else bool(int(value)) if key == "overlap" else int(value)
    return gen, session


def apply(profiler: Profiler, base: object, changes: dict[str, float]) -> None:
    changes = dict(changes)
    frames = changes.pop("segment_frames", 0)
    gen = dataclasses.replace(base.generation, **changes)
    profiler.profile = dataclasses.replace(base, generation=gen)
    loop_gen = with_segment_frames(profiler.assistant.loop.gen, frames)
    profiler.assistant.loop.gen = dataclasses.replace(loop_gen, stream=gen.stream())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device-profile", default="cpu-2core")
    ap.add_argument("--input", help="speech file (default: the profiler's espeak-ng sentence)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="base;first=4;chunk=25;steps=4;first=4,chunk=25")
    ap.add_argument("--segment-frames", type=int, default=0,
                    help="every answer segment N frames, as a trained model's clause (0: the model decides)")
    args = ap.parse_args()
    base = resolve_profile(args.device_profile, print)
    with tempfile.TemporaryDirectory() as tmp:
        audio, source = speech_input(args.input, 16000, Path(tmp))
    variants = args.variants.split(";")
    profilers: dict[tuple, tuple[Profiler, object, object]] = {}  # session settings -> (profiler, profile, its gen)
    for v in variants:
        key = tuple(sorted(parse_variant(v)[1].items()))
        if key not in profilers:
            profile = dataclasses.replace(base, session=dataclasses.replace(base.session, **dict(key)))
            profiler = Profiler(args.model, profile, log=lambda _: None, live_prefill=True,
                                segment_frames=args.segment_frames)
            incremental_turn(profiler, audio)  # warm-up
            profilers[key] = (profiler, profile, profiler.assistant.loop.gen)
    results: dict[str, list[TurnFigures]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            gen, session = parse_variant(v)
            profiler, profile, original = profilers[tuple(sorted(session.items()))]
            profiler.assistant.loop.gen = original
            apply(profiler, profile, gen)
            results[v].append(incremental_turn(profiler, audio))
            t = results[v][-1]
            print(f"round {r + 1} {v}: felt {t.felt_ms:.0f} ms, first audio {t.first_audio_ms:.0f} ms, "
                  f"RTF {t.rtf:.2f}, cores {t.cores_busy:.0%} busy", flush=True)

    def med(v: str, key: str) -> float:
        values = [getattr(t, key) for t in results[v]]
        return float(np.median([x for x in values if x is not None])) if any(x is not None for x in values) else np.nan

    segments = f"; segments of {args.segment_frames} frames" if args.segment_frames else ""
    print(f"\ninput: {source}; profile {base.name}{segments}; {args.rounds} rounds, variants interleaved\n")
    print("| variant | felt ms | first audio ms | RTF | cores busy | least buffer s | ended by | "
          f"felt / first audio / RTF vs {variants[0]} |")
    print("|---|---|---|---|---|---|---|---|")
    for v in variants:
        ratios = " / ".join(f"{med(v, k) / med(variants[0], k):.2f}" for k in ("felt_ms", "first_audio_ms", "rtf"))
        print(f"| {v} | {med(v, 'felt_ms'):.0f} | {med(v, 'first_audio_ms'):.0f} | {med(v, 'rtf'):.2f} | "
              f"{med(v, 'cores_busy'):.0%} | "
              f"{med(v, 'min_buffer_s'):.2f} | {results[v][0].ended_by} | {ratios} |")


if __name__ == "__main__":
    main()
