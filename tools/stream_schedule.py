"""Streaming schedules judged on measured stage costs: first sound, least playback buffer, time run dry.

A turn's wall-clock figures on a shared 2-core machine swing by 2x with the load (docs/benchmarks.md),
far more than a schedule changes them. This tool measures the costs a schedule is made of, each the
minimum over interleaved repeats (the least-disturbed run: what a quiet machine gives): one answer
frame (an LLM step fed the frame's codes + the audio head's 8 steps), one text token, and the decode
(flow + vocoder) of windows of several sizes (joined by straight lines between them). It then plays one
segment of ``--segment`` codes through each schedule, the way the speech loop runs it (frames made one
after another, each due window decoded before the next frame, a window's audio less the held-back
samples queued for a player that starts at the first piece) and prints, per schedule, the first piece's
time after the segment's first frame began, the least audio queued after playback started, how long
the speaker ran dry, and the segment's compute per second of audio.

    python tools/stream_schedule.py --model PKG [--device-profile cpu-2core] [--repeats 5] [--segment 40] \
        [--schedules "6,16;6,4,2,32;4,4,2,32,3"]   # first,chunk[,growth,cap[,left context]]

``--costs FRAME_MS,FIXED_MS,PER_CODE_MS`` plays the schedules on given costs instead (an answer frame, and a
window's decode as fixed + per code), e.g. figures measured on a quiet machine; nothing is timed then.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from bcaudio.config import StreamSettings
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.package.profiles import resolve_profile
from bcaudio.runtime.profiling.profiler import Profiler

CODE_S = 0.08  # one code: 4 mel frames of 20 ms


def least(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """-> (least wall seconds, least CPU seconds of this process, all threads) over ``repeats`` runs."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        run()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return wall, cpu


def parse_schedule(spec: str, left: int, holdback: int) -> StreamSettings:
    """``first,chunk[,growth,cap[,left context]]``."""
    parts = [float(x) for x in spec.split(",")]
    first, chunk = int(parts[0]), int(parts[1])
    growth = parts[2] if len(parts) > 2 else 1.0
    cap = int(parts[3]) if len(parts) > 3 else 0
    left = int(parts[4]) if len(parts) > 4 else left
    return StreamSettings(chunk, first, left, holdback, growth=growth, max_chunk_frames=cap)


def play(settings: StreamSettings, codes: int, frame_s: float, decode_s: Callable[[int], float]) -> dict[str, float]:
    """One segment on the model clock (0: its first frame begins). -> first piece, least buffer, dry, compute."""
    clock, done, window, played_to = 0.0, 0, 0, 0.0  # played_to: audio seconds of the segment queued so far
    holdback = settings.holdback_samples / 24000
    pieces: list[tuple[float, float]] = []  # (time the piece is queued, its audio seconds)
    while done < codes:
        size = min(settings.window_frames(window), codes - done)
        clock += size * frame_s
        left = min(settings.left_context_frames, done)
        clock += decode_s(size + left)
        end = (done + size) * CODE_S - (0 if done + size == codes else holdback)
        pieces.append((clock, end - played_to))
        done, window, played_to = done + size, window + 1, end
    start = pieces[0][0]
    queued_until, least_buffer, dry = start + pieces[0][1], float("inf"), 0.0
    for at, seconds in pieces[1:]:  # the audio left ahead of the speaker when each later piece arrives
        least_buffer = min(least_buffer, max(0.0, queued_until - at))
        if at > queued_until:
            dry += at - queued_until
            queued_until = at
        queued_until += seconds
    return {"first_s": start, "least_buffer_s": least_buffer if len(pieces) > 1 else 0.0, "dry_s": dry,
            "rtf": clock / (codes * CODE_S)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device-profile", default="cpu-2core")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--segment", type=int, default=40, help="codes in the segment played through each schedule")
    ap.add_argument("--sizes", default="3,4,6,8,10,12,16,22,32,38", help="window sizes (codes) whose decode is timed")
    ap.add_argument("--schedules", default="6,16;6,4,2,32;6,6,1.5,24;4,4,2,32;8,8,2,32")
    ap.add_argument("--costs", help="FRAME_MS,FIXED_MS,PER_CODE_MS: play the schedules on these, time nothing")
    args = ap.parse_args()
    profile = resolve_profile(args.device_profile, print)
    left, holdback = profile.generation.stream_left_context_frames, StreamSettings().holdback_samples
    if args.costs:
        frame_ms, fixed_ms, per_code_ms = (float(x) for x in args.costs.split(","))
        print(f"given costs: answer frame {frame_ms} ms, decode {fixed_ms} ms + {per_code_ms} ms/code")
        table(args, left, holdback, frame_ms / 1e3, lambda n: (fixed_ms + per_code_ms * n) / 1e3)
        return
    profiler = Profiler(args.model, profile, log=lambda _: None)
    backend = profiler.assistant.loop.backend
    cfg = profiler.assistant.cfg
    k = cfg.bridge.num_codebooks
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in args.sizes.split(",")]
    codes = rng.integers(0, min(cfg.bridge.codebook_sizes), (max(sizes), k))
    backend.feed([cfg.tokens.assistant] * 200, logits=False)  # a context of a few hundred positions, as in a turn
    position = backend.position
    _, hidden = backend.feed([cfg.tokens.audio_pad], codes[:1], logits=False)

    def frame() -> None:
        backend.truncate(position)
        backend.feed([cfg.tokens.audio_pad], codes[:1], logits=False)  # as the speech loop feeds a frame
        backend.audio_frame(hidden, lambda i, logits: int(np.argmax(logits[:cfg.bridge.codebook_sizes[i]])))

    def text() -> None:
        backend.truncate(position)
        backend.feed([cfg.tokens.assistant])

    def window(n: int) -> Callable[[], object]:
        return lambda: backend.decode_segment(codes[:n], 0, 0, SourcePhase(cfg.vocoder.nb_harmonics + 1))

    frame(), text(), window(sizes[0])()  # first-run allocations
    runs: dict[object, Callable[[], object]] = {"frame": frame, "text": text, **{n: window(n) for n in sizes}}
    best = {key: (float("inf"), float("inf")) for key in runs}
    for _ in range(args.repeats):  # interleaved: a spell of load falls on every size alike
        for key, run in runs.items():
            wall, cpu = least(run, 3 if key in ("frame", "text") else 1)
            best[key] = (min(best[key][0], wall), min(best[key][1], cpu))
    per_code, fixed = np.polyfit(sizes, [best[n][0] for n in sizes], 1)
    print(f"profile {profile.name}, {profile.generation.flow_steps} flow steps; least of {args.repeats} "
          f"interleaved repeats, wall ms (CPU ms of the process's threads)")
    print(f"answer frame (llm step + 8 head steps) {best['frame'][0] * 1e3:.1f} ({best['frame'][1] * 1e3:.1f}), "
          f"text token {best['text'][0] * 1e3:.1f} ({best['text'][1] * 1e3:.1f})")
    print("decode by window codes: " + ", ".join(f"{n}: {best[n][0] * 1e3:.0f} ({best[n][1] * 1e3:.0f})"
                                                 for n in sizes)
          + f"; wall fit {fixed * 1e3:.0f} ms + {per_code * 1e3:.1f} ms/code")
    walls = [best[n][0] for n in sizes]

    def decode_s(n: int) -> float:
        """The measured sizes' wall times, joined by straight lines (and the last one's continued)."""
        if n <= sizes[-1]:
            return float(np.interp(n, sizes, walls))
        return walls[-1] + (n - sizes[-1]) * (walls[-1] - walls[-2]) / (sizes[-1] - sizes[-2])

    table(args, left, holdback, best["frame"][0], decode_s)


def table(args: argparse.Namespace, left: int, holdback: int, frame_s: float, decode_s: Callable[[int], float]) -> None:
    print(f"\nsegment of {args.segment} codes, left context {left} unless the schedule names one\n")
    print("| schedule (first, chunk, growth, cap, left) | windows | first piece after the first frame | least buffer "
          "| ran dry | compute / audio |")
    print("|---|---|---|---|---|---|")
    for spec in args.schedules.split(";"):
        settings = parse_schedule(spec, left, holdback)
        sizes_used, total, w = [], 0, 0
        while total < args.segment:
            sizes_used.append(min(settings.window_frames(w), args.segment - total))
            total, w = total + sizes_used[-1], w + 1
        r = play(settings, args.segment, frame_s, decode_s)
        print(f"| {spec} | {'+'.join(map(str, sizes_used))} | {r['first_s'] * 1e3:.0f} ms | "
              f"{r['least_buffer_s']:.2f} s | {r['dry_s'] * 1e3:.0f} ms | {r['rtf']:.2f} |")


if __name__ == "__main__":
    main()
