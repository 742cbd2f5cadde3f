"""``make demo``: the embedded default end to end on a fresh machine, with no download."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bcaudio.atomic import atomic_path
from bcaudio.errors import UserError

QUESTION = "Hello! Can you tell me what the weather will be like tomorrow?"


def speak_question(path: Path) -> Path:
    """A spoken question made offline by espeak-ng (installed by `make`), converted to 16 kHz by sox without
    dither (``-D``: sox dithers with a fresh seed each run, so the demo's question, and so its answer, would differ
    between runs)."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise UserError("espeak-ng and sox are needed for the demo question; run `make demo` (it installs them)")
    with tempfile.TemporaryDirectory() as tmp, atomic_path(path) as converted:
        raw = Path(tmp) / "question.22k.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), QUESTION], check=True, capture_output=True)
        subprocess.run(["sox", "-D", str(raw), "-r", "16000", "-c", "1", str(converted)], check=True,
                       capture_output=True)
    return path


def run_demo(workdir: Path) -> None:
    from bcaudio.cli.console import stream_to_console
    from bcaudio.export.checkpoint import init_checkpoint
    from bcaudio.export.package import export_package
    from bcaudio.export.summary import print_summary
    from bcaudio.presets import get_preset
    from bcaudio.runtime.audio.files import load_audio
    from bcaudio.runtime.generation.assistant import VoiceAssistant

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt, package = workdir / "tiny-checkpoint", workdir / "tiny-package"
    if not (ckpt / "config.json").exists():
        print("== 1/3 init: a deterministic random `tiny` checkpoint in the official layout")
        init_checkpoint(get_preset("tiny"), ckpt, seed=0, progress=print, overwrite=True)  # an interrupted init
    print_summary(ckpt)
    if not (package / "manifest.json").exists():
        print("\n== 2/3 export: one ONNX graph per part + manifest")
        export_package(ckpt, package, overwrite=True)
    question = speak_question(workdir / "question.wav")
    print(f"\n== 3/3 a voice turn on ONNX Runtime (no torch)\nquestion: {QUESTION!r} ({question})")
    start = time.perf_counter()
    assistant = VoiceAssistant(package)
    audio = load_audio(question, assistant.cfg.frontend.sampling_rate)
    print("answer: ", end="")
    stream_to_console(assistant.respond(audio, assistant.cfg.frontend.sampling_rate),
                      assistant.cfg.generation.crossfade_samples, assistant.sample_rate, workdir / "reply.wav")
    print(f"(random weights: the answer is babble by design; turn with session start-up "
          f"{time.perf_counter() - start:.1f} s)")
