"""One turn with the torch reference: ``bcaudio generate`` and the oracle of the runtime's parity tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bcaudio.cli.console import stream_to_console
from bcaudio.errors import UserError
from bcaudio.export.checkpoint import load_checkpoint, load_config
from bcaudio.export.reference import Reference
from bcaudio.export.reference_backend import TorchBackend, tokenize_chunks
from bcaudio.runtime.audio.files import check_speech, load_audio
from bcaudio.runtime.generation.speech_loop import Event, SpeechLoop
from bcaudio.runtime.package.text_codec import TextCodec


def reference_codes(ref: Reference, audio: np.ndarray) -> np.ndarray:
    """16 kHz audio -> (frames, K) codes, 30 s chunks tokenized on their own (spec §1)."""
    codes = tokenize_chunks(ref, audio)
    if not len(codes):
        raise UserError("input audio is too short to give a single audio token (needs > 60 ms of speech)")
    return codes


def reference_events(ref: Reference, codec: TextCodec, mode: str, audio: np.ndarray | None, text: str | None,
                     seed: int, greedy: bool) -> Iterator[Event]:
    generation = ref.cfg.generation.greedy() if greedy else ref.cfg.generation
    loop = SpeechLoop(ref.cfg, TorchBackend(ref, seed), codec, seed=seed, generation=generation)
    if mode == "tts":
        if not text:
            raise UserError("--mode tts needs --text")
        return loop.speak(text)
    if audio is None:
        raise UserError(f"--mode {mode} needs --input speech.wav")
    codes = reference_codes(ref, audio)
    return {"respond": loop.respond, "text": loop.respond_text, "asr": loop.transcribe}[mode](codes)


def run_reference_turn(ckpt: Path, mode: str, input_wav: str | None, text: str | None, output_wav: str | None,
                       seed: int, greedy: bool) -> None:
    rate = load_config(ckpt).frontend.sampling_rate  # the input is read (and refused) before the weights
    audio = load_audio(input_wav, rate) if input_wav else None
    if audio is not None:
        check_speech(audio, print)
    ref = load_checkpoint(ckpt)
    codec = TextCodec(ckpt / "tokenizer.json")
    events = reference_events(ref, codec, mode, audio, text, seed, greedy)
    speech = mode in ("respond", "tts")
    stream_to_console(events, ref.cfg.generation.crossfade_samples, ref.cfg.vocoder.sampling_rate,
                      output_wav if speech else None, audio=speech)
