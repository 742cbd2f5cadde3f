"""What the stateful vocoder (export/vocoder_stream.py) saves over the windowed one, and what it holds back.

A streamed segment's windows (runtime/generation/segment_stream.py) vocode their left context and
their held-back end again; the stateful graph vocodes each mel frame once and returns exactly the
whole segment's samples, but only those whose inputs have all arrived. This runs both on one
segment with the device profile's window schedule, interleaved (the box is noisy), and prints per
window the vocoder time and the audio each has made playable by then.

    python tools/vocoder_stream_cost.py --checkpoint CKPT [--device-profile cpu-2core] [--codes 40]
        [--repeats 5] [--threads 2] [--windowed 4800:3,4800:6,9480:9]

All against one whole-segment vocoder call on the same mel, so only the vocoder's windowing differs (the
flow's windows differ too in a real stream: tools/stream_fidelity_table.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bcaudio.config import StreamSettings
from bcaudio.export.checkpoint import load_checkpoint
from bcaudio.export.export_vocoder import export_vocoder, export_vocoder_stream, first_stream_states
from bcaudio.export.vocoder_stream import StreamingHiFT
from bcaudio.metrics import snr_db
from bcaudio.runtime.generation.segment_stream import SegmentStream
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.speech_loop import crossfade_join
from bcaudio.runtime.package.profiles import load_profile, stream_settings


def pairs(text: str) -> list[tuple[int, int]]:
    """``4800:3,4800:6`` -> [(4800, 3), (4800, 6)]."""
    try:
        return [(int(h), int(c)) for h, c in (p.split(":") for p in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write HOLD:LEFT pairs, e.g. 4800:3,4800:6") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder (with hift.pt)")
    parser.add_argument("--device-profile", default="cpu-2core")
    parser.add_argument("--codes", type=int, default=40, help="the segment's codes (40: the random small turn's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windowed", type=pairs, default=[], metavar="HOLD:LEFT,...",
                        help="also the windowed vocoder's distance from the whole call with these hold-backs "
                             "(samples) and left contexts (codes), the profile's schedule otherwise")
    args = parser.parse_args()
    ref = load_checkpoint(args.checkpoint, parts=["vocoder"])
    cfg, settings = ref.cfg, stream_settings(load_profile(args.device_profile), None)
    lag = StreamingHiFT(ref.vocoder).lag_samples()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        export_vocoder(ref.vocoder, cfg, Path(tmp) / "whole.onnx")
        export_vocoder_stream(ref.vocoder, cfg, Path(tmp) / "stream.onnx")
        whole = ort.InferenceSession(str(Path(tmp) / "whole.onnx"), opts, providers=["CPUExecutionProvider"])
        stream = ort.InferenceSession(str(Path(tmp) / "stream.onnx"), opts, providers=["CPUExecutionProvider"])
    stride, samples = cfg.bridge.avg_pooler, cfg.vocoder.samples_per_frame
    frames = cfg.decoded_frames(args.codes)
    rng = np.random.default_rng(0)
    mel = (rng.normal(-5.0, 2.0, (1, cfg.vocoder.num_mels, frames))).astype(np.float32)
    noise = rng.standard_normal((1, cfg.vocoder.nb_harmonics + 1, frames * samples)).astype(np.float32)
    phases = np.zeros((1, cfg.vocoder.nb_harmonics + 1), np.float32)

    def windowed(settings: StreamSettings = settings) -> tuple[list[float], list[int], list[tuple[int, int]],
                                                               np.ndarray]:
        times, ends, fed = [], [], []

        def decode(codes: np.ndarray, first: int, phase: SourcePhase, steps: int | None) -> np.ndarray:
            f0, n = first * stride, cfg.decoded_frames(len(codes))
            start = time.perf_counter()
            wave, frame_phase = whole.run(None, {"mel": mel[..., f0:f0 + n],
                                                 "noise": noise[..., f0 * samples:(f0 + n) * samples],
                                                 "harmonic_phase": phases, **phase.feeds(f0)})
            times.append(time.perf_counter() - start)
            phase.record(f0, frame_phase[0])
            fed.append((f0 + n, n))
            return wave[0]

        segment = SegmentStream(decode, settings, cfg.generation.crossfade_samples, cfg)
        codes = np.zeros(args.codes, np.int64)
        overlap = 0  # consecutive pieces share a crossfade: the second's first samples are not new audio
        played = 0
        pieces = [p for t in range(1, args.codes + 1) for _, p in segment.add(codes[:t])] + \
            [p for _, p in segment.finish(codes)]
        for piece in pieces:
            played += piece.size - overlap
            overlap = cfg.generation.crossfade_samples
            ends.append(played)
        return times, ends, fed, crossfade_join(pieces, cfg.generation.crossfade_samples)

    def stateful(cuts: list[int]) -> tuple[list[float], list[int], np.ndarray]:
        states, times, ends, done, made, pieces = first_stream_states(stream.get_inputs()), [], [], 0, 0, []
        for i, cut in enumerate(cuts):
            final = cut == frames
            start = time.perf_counter()
            out = stream.run(None, {"mel": mel[..., done:cut], "noise": noise[..., done * samples:cut * samples],
                                    "harmonic_phase": phases, "first": np.array([int(i == 0)]),
                                    "final": np.array([int(final)]), **states})
            times.append(time.perf_counter() - start)
            states = dict(zip(states, out[1:], strict=True))
            made += out[0].shape[-1]
            ends.append(made)
            pieces.append(out[0][0])
            done = cut
        return times, ends, np.concatenate(pieces)

    w_total, s_total = [], []
    cuts = [end for end, _ in windowed()[2][:-1]] + [frames]  # the stateful calls end where the windows end
    for repeat in range(args.repeats + 1):  # the first: untimed, both sessions' buffers grow to the sizes
        if repeat % 2:  # which runs first alternates
            s_times, s_ends, s_wave = stateful(cuts)
            w_times, w_ends, fed, w_wave = windowed()
        else:
            w_times, w_ends, fed, w_wave = windowed()
            s_times, s_ends, s_wave = stateful(cuts)
        if repeat:
            w_total.append(sum(w_times))
            s_total.append(sum(s_times))
    ms = 1000 / cfg.vocoder.sampling_rate
    print(f"{args.codes}-code segment ({frames} mel frames), profile {args.device_profile}, {args.threads} threads, "
          f"{args.repeats} interleaved repeats")
    print("| window | mel frames fed by then | windowed: frames vocoded, ms | audio playable (ms) | "
          "stateful: ms | audio playable (ms) |")
    print("|---|---|---|---|---|---|")
    for i, (end, vocoded) in enumerate(fed):
        print(f"| {i} | {end} | {vocoded}, {1000 * w_times[i]:.1f} | {w_ends[i] * ms:.0f} | "
              f"{1000 * s_times[i]:.1f} | {s_ends[i] * ms:.0f} |")
    ratio = [s / w for s, w in zip(s_total, w_total, strict=True)]
    print(f"segment vocoder ms: windowed {min(w_total) * 1000:.0f}-{max(w_total) * 1000:.0f}, stateful "
          f"{min(s_total) * 1000:.0f}-{max(s_total) * 1000:.0f}; stateful / windowed per repeat "
          f"{', '.join(f'{r:.2f}' for r in ratio)} (median {statistics.median(ratio):.2f})")
    whole_wave = whole.run(None, {"mel": mel, "noise": noise, "harmonic_phase": phases,
                                  **SourcePhase(cfg.vocoder.nb_harmonics + 1).feeds(0)})[0][0]
    print(f"against one whole-segment call on the same mel: windowed SNR {snr_db(w_wave, whole_wave):.1f} dB "
          f"(max |diff| {np.abs(w_wave - whole_wave).max():.2g}), stateful max |diff| "
          f"{np.abs(s_wave - whole_wave).max():.2g} (peak {np.abs(whole_wave).max():.2f})")
    print(f"stateful lag: {lag} samples ({lag * ms:.0f} ms of audio behind the mel fed); windowed hold-back: "
          f"{settings.holdback_samples} samples ({settings.holdback_samples * ms:.0f} ms)")
    if args.windowed:
        print("\n| windowed: hold-back samples, left context codes | SNR against the whole call | "
              "frames vocoded per frame | first piece ms |")
        print("|---|---|---|---|")
    for hold, left in args.windowed:
        _, ends, fed, wave = windowed(dataclasses.replace(settings, holdback_samples=hold, left_context_frames=left))
        print(f"| {hold}, {left} | {snr_db(wave, whole_wave):.1f} dB | {sum(n for _, n in fed) / frames:.2f} | "
              f"{ends[0] * ms:.0f} |")


if __name__ == "__main__":
    main()
