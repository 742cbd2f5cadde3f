"""End of turn with the plain hangover vs Smart Turn v3.2: README's "End of turn" table.

Synthetic utterances from espeak-ng (several voices and rates), each sentence said straight and with
a silence inserted mid-sentence (SSML ``<break>``), in a quiet room (lead-in silence, low noise).
Each utterance is endpointed exactly as the live session does it (``end_of_turn.first_end_of_turn``:
Silero VAD per 32 ms frame, the detector asked after ``turn_pause_ms`` of non-speech, its verdict
landing on the frame after its real run time). Reported per setting: the mean and p90 delay from the
last voiced sample (found on the audio) to the decision, and the cut-off rate: ends decided before
the sentence's last voiced sample, i.e. inside the sentence.

``--greetings`` says questions that begin with a greeting instead ("Hello!" and then the question, the
demo's form: the greeting alone sounds finished), to weigh ``turn_min_ms``: the detector is asked only once
the utterance has lasted that long. ``--short`` says short replies ("Yes, please.", "Stop now!"), which are
what a minimum costs: a turn shorter than ``turn_min_ms`` is never judged and waits for the hangover.

    python tools/turn_detector_table.py [--voices en-us,en,en+f3] [--rates 150,175,200] [--pauses 0,300,500,800] \
        [--greetings | --short]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from bcaudio.runtime.audio.end_of_turn import first_end_of_turn
from bcaudio.runtime.audio.turn_detector import SmartTurn
from bcaudio.runtime.audio.vad import VAD_RATE, EndpointSettings, SileroVad
from bcaudio.runtime.audio.voicing import last_voiced_sample

SENTENCES = [  # (before the pause, after it)
    ("I would like to", "book a table for two people tonight."),
    ("Can you tell me", "the time in Paris?"),
    ("Please remind me to call my", "mother tomorrow morning."),
    ("The meeting has been moved to", "Thursday afternoon."),
    ("What is the", "weather like today?"),
    ("Turn off the lights in the", "living room, please."),
]
GREETINGS = [  # (the greeting, the question after it)
    ("Hello!", "Can you tell me what the weather will be like tomorrow?"),
    ("Hi there!", "What is the time in Paris?"),
    ("Good morning!", "Please remind me to call my mother tonight."),
    ("Hey!", "Turn off the lights in the living room."),
]
SHORT = [  # short replies, split where a pause may fall
    ("Yes,", "please."),
    ("No,", "thank you."),
    ("Stop", "now!"),
    ("That sounds", "good."),
    ("What time", "is it?"),
    ("Turn it", "off."),
]
SETTINGS = {  # label -> endpoint settings
    "hangover 640 ms": EndpointSettings(end_ms=640),
    "Smart Turn after 192 ms, else hangover 640 ms": EndpointSettings(end_ms=640, turn_detector=True),
    "Smart Turn after 192 ms, else hangover 1000 ms": EndpointSettings(end_ms=1000, turn_detector=True),
    "Smart Turn after 192 ms once 1000 ms long, else hangover 640 ms": EndpointSettings(
        end_ms=640, turn_detector=True, turn_min_ms=1000),
    "Smart Turn after 192 ms once 1500 ms long, else hangover 640 ms": EndpointSettings(
        end_ms=640, turn_detector=True, turn_min_ms=1500),
    "Smart Turn (threshold 0.7) after 192 ms, else hangover 640 ms": EndpointSettings(
        end_ms=640, turn_detector=True, turn_threshold=0.7),
}


def utterance(before: str, after: str, pause_ms: int, voice: str, wpm: int, work: Path, seed: int) -> np.ndarray:
    """Half a second of room, the sentence (with a silence of ``pause_ms`` inside), two seconds of room."""
    brk = f" <break time='{pause_ms}ms'/> " if pause_ms else " "
    wav = work / "u.wav"
    subprocess.run(["espeak-ng", "-m", "-v", voice, "-s", str(wpm), "-w", str(wav),
                    f"<speak>{before}{brk}{after}</speak>"], check=True, capture_output=True)
    speech, rate = sf.read(str(wav), dtype="float32")
    speech = soxr.resample(speech, rate, VAD_RATE)
    audio = np.concatenate([np.zeros(VAD_RATE // 2), speech, np.zeros(2 * VAD_RATE)])
    return (audio + 0.002 * np.random.default_rng(seed).standard_normal(audio.size)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voices", default="en-us,en,en+f3")
    ap.add_argument("--rates", default="150,175,200", help="espeak-ng words per minute")
    ap.add_argument("--pauses", default="0,300,500,800", help="ms of silence inserted mid-sentence (0: none)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--greetings", action="store_true", help="questions that begin with a greeting")
    which.add_argument("--short", action="store_true", help="short replies")
    args = ap.parse_args()
    sentences = GREETINGS if args.greetings else SHORT if args.short else SENTENCES
    vad, detector = SileroVad(), SmartTurn()
    rows: dict[str, dict[str, list]] = {k: {"delay": [], "cut": [], "cut_paused": [], "runs": []} for k in SETTINGS}
    pauses = [int(p) for p in args.pauses.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        seed = 0
        for before, after in sentences:
            for voice in args.voices.split(","):
                for wpm in (int(r) for r in args.rates.split(",")):
                    for pause in pauses:
                        seed += 1
                        audio = utterance(before, after, pause, voice, wpm, Path(tmp), seed)
                        truth = last_voiced_sample(audio)
                        for label, settings in SETTINGS.items():
                            end = first_end_of_turn(audio, vad, settings, detector)
                            row = rows[label]
                            cut = end is None or end.decision < truth
                            row["cut_paused" if pause else "cut"].append(cut)
                            if not cut:
                                row["delay"].append((end.decision - truth) / VAD_RATE * 1000)
                            if end is not None:
                                row["runs"] += end.detector_seconds
    n = len(sentences) * len(args.voices.split(",")) * len(args.rates.split(","))
    print(f"{n} sentences x pauses {args.pauses} ms ({n * len(pauses)} utterances); voices {args.voices}, "
          f"rates {args.rates} wpm\n")
    print("| end of turn | mean delay ms | p90 delay ms | cut-offs, no pause | cut-offs, with a mid-sentence pause "
          "| detector ms per run |")
    print("|---|---|---|---|---|---|")
    for label, row in rows.items():
        delay = np.array(row["delay"])
        runs = f"{np.mean(row['runs']) * 1000:.0f}" if row["runs"] else "-"
        paused = f"{np.mean(row['cut_paused']):.0%}" if row["cut_paused"] else "-"
        print(f"| {label} | {delay.mean():.0f} | {np.percentile(delay, 90):.0f} | {np.mean(row['cut']):.0%} "
              f"| {paused} | {runs} |")
    for pause in pauses[1:]:
        print(f"\ncut-offs with a {pause} ms pause: " + ", ".join(
            f"{label}: {_pause_rate(rows[label]['cut_paused'], pauses[1:], pause):.0%}" for label in SETTINGS))


def _pause_rate(cuts: list[bool], pauses: list[int], pause: int) -> float:
    """Cut-off rate of the utterances with this pause (they come in the order of ``pauses``)."""
    i = pauses.index(pause)
    return float(np.mean(cuts[i::len(pauses)]))


if __name__ == "__main__":
    main()
