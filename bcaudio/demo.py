"""``make demo``: the embedded default end to end on a fresh machine, with no download."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from bcaudio.errors import UserError

QUESTION = "Hello! Can you tell me what the weather will be like tomorrow?"


def speak_question(path: Path) -> Path:
    """A spoken question made offline by espeak-ng (installed by `make`), converted to 16 kHz by sox."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise UserError("espeak-ng and sox are needed for the demo question; run `make demo` (it installs them)")
    raw = path.with_suffix(".22k.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), QUESTION], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(path)], check=True, capture_output=True)
    raw.unlink()
    return path


def run_demo(workdir: Path) -> None:
    from bcaudio.export.checkpoint import init_checkpoint
    from bcaudio.export.reference_turn import run_reference_turn
    from bcaudio.export.summary import print_summary
    from bcaudio.presets import get_preset

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / "tiny-checkpoint"
    if not (ckpt / "config.json").exists():
        print("== 1. init: a deterministic random `tiny` checkpoint in the official layout")
        init_checkpoint(get_preset("tiny"), ckpt, seed=0, progress=print)
    print_summary(ckpt)
    question = speak_question(workdir / "question.wav")
    print(f"\n== 2. a voice turn with the torch reference model\nquestion: {QUESTION!r} ({question})")
    start = time.perf_counter()
    run_reference_turn(ckpt, mode="respond", input_wav=str(question), text=None,
                       output_wav=str(workdir / "reply.wav"), seed=0, greedy=False)
    print(f"(random weights: the answer is babble by design; {time.perf_counter() - start:.1f} s)")
