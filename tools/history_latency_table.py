"""What the published history costs a second turn, against the live KV history: the README's table.

One package, one device profile, one recording asked twice. Each repeat runs three conversations
side by side on the same open sessions (fresh cache each): ``live`` history; ``published`` with the
answer rebuilt lazily, by turn 2's start (what ``VoiceAssistant.respond`` does when nothing calls
``settle_history`` in between: on the critical path); ``published`` rebuilt between the turns (what
``bcaudio chat`` does while the answer plays: off it). Turn 2 is timed from the call (whole-utterance
tokenization included) to its first audio; the rebuild is timed on its own, with its audio-encoder
share and the positions it prefilled again.

    python tools/history_latency_table.py --model PKG --input speech.wav [--device-profile cpu-2core] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import soundfile as sf

from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.speech_loop import AudioSegment, SpeechLoop, TextDelta, collect
from bcaudio.runtime.package.ort_backend import OrtBackend
from bcaudio.runtime.package.profiles import resolve_profile

VARIANTS = ("live", "published, rebuilt at turn 2's start", "published, rebuilt between the turns")


def first_audio(turn) -> tuple[float, int]:
    """Seconds from calling ``turn()`` (which feeds the prompt, and settles a pending answer, before it returns
    the events) to the first audio sample, and the text tokens shown before it (the answer's own share)."""
    start = time.perf_counter()
    seen, tokens = None, 0
    for event in turn():
        if seen is None and isinstance(event, TextDelta):
            tokens += len(event.ids)
        if seen is None and isinstance(event, AudioSegment) and event.waveform.size:
            seen = time.perf_counter() - start
    return float("nan") if seen is None else seen, tokens


def conversation(a: VoiceAssistant, variant: str, audio: np.ndarray, flow_steps: int, seed: int) -> dict[str, float]:
    history = "live" if variant == "live" else "published"
    a.backend = OrtBackend(a.sessions, seed=seed, flow_steps=flow_steps)
    a.loop = SpeechLoop(a.cfg, a.backend, a.codec, seed=seed, generation=dataclasses.replace(a.loop.gen,
                                                                                             history=history))
    encode = {"s": 0.0}
    tokenize = a.backend.tokenize

    def timed_tokenize(x: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = tokenize(x)
        encode["s"] += time.perf_counter() - t
        return out

    first = collect(a.respond(audio, 16000), a.cfg.generation.crossfade_samples)
    answer_s = first.waveform(a.cfg.generation.crossfade_samples).size / a.sample_rate
    out = {"answer_s": answer_s}
    if variant.endswith("between the turns"):
        a.backend.tokenize = timed_tokenize  # type: ignore[method-assign]
        a.loop.settle_history()
        a.backend.tokenize = tokenize  # type: ignore[method-assign]
        out |= {"rebuild_s": a.loop.history_seconds or 0.0, "encode_s": encode["s"],
                "prefilled": a.loop.history_prefilled}
    out["first_audio_s"], out["tokens"] = first_audio(lambda: a.respond(audio, 16000))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model package folder")
    parser.add_argument("--input", required=True, help="a speech recording (any rate; made mono 16 kHz)")
    parser.add_argument("--device-profile", default="cpu-2core")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    profile = resolve_profile(args.device_profile, print)
    a = VoiceAssistant(args.model, profile.session, seed=args.seed, flow_steps=profile.generation.flow_steps,
                       stream=profile.generation.stream(), log=lambda _: None)
    audio, rate = sf.read(args.input, dtype="float32", always_2d=True)
    audio = a.prepare(audio, rate)
    conversation(a, "live", audio, profile.generation.flow_steps, args.seed)  # warm-up
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):  # interleaved: the machine's load hits every variant alike
        for variant in VARIANTS:
            runs[variant].append(conversation(a, variant, audio, profile.generation.flow_steps, args.seed))
    live = statistics.median(r["first_audio_s"] for r in runs["live"])
    print(f"{audio.size / 16000:.2f} s question, profile {profile.name}, medians of {args.repeats}\n")
    print("| history | turn 2 first audio ms | vs live | text tokens before it | rebuild ms (audio encoder ms) | "
          "positions prefilled again |")
    print("|---|---|---|---|---|---|")
    for variant in VARIANTS:
        rs = runs[variant]
        fa = statistics.median(r["first_audio_s"] for r in rs)
        rebuild = (f"{statistics.median(r['rebuild_s'] for r in rs) * 1000:.0f} "
                   f"({statistics.median(r['encode_s'] for r in rs) * 1000:.0f}), "
                   f"{statistics.median(r['answer_s'] for r in rs):.1f} s of answer audio"
                   if "rebuild_s" in rs[0] else "")
        prefilled = f"{statistics.median(r['prefilled'] for r in rs):.0f}" if "prefilled" in rs[0] else ""
        tokens = "/".join(str(r["tokens"]) for r in rs)
        print(f"| {variant} | {fa * 1000:.0f} | {fa / live:.2f}x | {tokens} | {rebuild} | {prefilled} |")


if __name__ == "__main__":
    main()
