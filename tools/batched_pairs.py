"""Batched against separate decode steps for N conversations at once, alternating pairs on one set of sessions.

What ``bcaudio bench --sessions`` tables once per count, repeated in interleaved pairs so the ratio between
the two stands out of a shared box's drift: aggregate frames per second, the share of the cores busy, the
worst conversation's RTF and the median first audio (``benchmarks.sessions.run_sessions``).

    python tools/batched_pairs.py --model PKG [--device-profile cpu-2core] [--input speech.wav] \\
        [--sessions 1,2,4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bcaudio.benchmarks.sessions import run_sessions
from bcaudio.runtime.package.profiles import resolve_profile
from bcaudio.runtime.package.sessions import PackageSessions
from bcaudio.runtime.package.text_codec import TextCodec
from bcaudio.runtime.profiling.profiler import speech_input


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--device-profile", default="cpu-2core")
    ap.add_argument("--input", type=Path, help="speech file (default: the profiler's espeak-ng sentence)")
    ap.add_argument("--sessions", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    profile = resolve_profile(args.device_profile, lambda _: None)
    sessions = PackageSessions(args.model, profile.session, log=lambda _: None)
    codec = TextCodec(args.model / "tokenizer.json")
    with tempfile.TemporaryDirectory() as tmp:
        audio, source = speech_input(args.input, sessions.cfg.frontend.sampling_rate, Path(tmp))
    (codes,) = sessions.run("audio_tokenizer", {"waveform": audio[None].astype(np.float32)})
    run_sessions(sessions, codec, profile, codes[0], 1, batched=False)  # warm-up: first-run allocations
    print(f"input: {source}; profile {profile.name}\n")
    print("| sessions | round | batched frames/s | separate frames/s | ratio | cores busy (batched / separate) | "
          "worst RTF | first audio median ms |")
    print("|---|---|---|---|---|---|---|---|")
    for count in (int(n) for n in args.sessions.split(",")):
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            runs = {b: run_sessions(sessions, codec, profile, codes[0], count, b).figures() for b in order}
            on, off = runs[True], runs[False]
            print(f"| {count} | {r + 1} | {on['aggregate_frames_per_s']:.1f} | {off['aggregate_frames_per_s']:.1f} | "
                  f"{on['aggregate_frames_per_s'] / off['aggregate_frames_per_s']:.2f} | "
                  f"{on['cores_busy']:.0%} / {off['cores_busy']:.0%} | {on['rtf_max']:.2f} / {off['rtf_max']:.2f} | "
                  f"{on['first_audio_ms_median']:.0f} / {off['first_audio_ms_median']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
