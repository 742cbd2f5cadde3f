"""Reading and writing audio files: the one loader every command reads speech through, and an atomic writer.

Every command (respond, transcribe, generate, validate, profile, bench, chat --input-wav) reads its audio
with ``load_audio``, so a file that one of them refuses, all of them refuse with the same line.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bcaudio.atomic import write_bytes

MAX_SECONDS = 3600.0  # longer files are refused before they are read: an hour of 16 kHz float32 is 230 MB
SILENCE_PEAK = 1e-4  # below this the input carries no speech worth tokenizing
CLIP_LEVEL = 0.999
WRITABLE = {".wav": "WAV", ".flac": "FLAC"}


class AudioInputError(ValueError):
    """Audio that cannot be used as it is; the message says what to do."""


def load_audio(path: str | Path, rate: int, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Mono float32 at ``rate``: channels averaged, resampled with soxr (spec §1: no loudness normalisation)."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioInputError(f"{path}: no such file")
    if path.is_dir():
        raise AudioInputError(f"{path} is a folder; give an audio file")
    if not os.access(path, os.R_OK):
        raise AudioInputError(f"{path}: not readable (permissions); fix them or copy the file")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path}: empty file; record or pass a WAV or FLAC file")
    try:
        info = sf.info(str(path))
        if info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
            raise AudioInputError(f"{path}: {info.frames / info.samplerate:.0f} s of audio, more than the "
                                  f"{max_seconds:.0f} s bcaudio reads; cut it into shorter files")
        audio, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise AudioInputError(f"{path}: unreadable or truncated audio ({reason}); convert it to WAV or FLAC") from None
    announced = max(info.frames, _wav_declared_frames(path, info.channels) or 0)
    if audio.shape[0] < announced:
        raise AudioInputError(f"{path}: truncated: the header announces {announced} samples, the file holds "
                              f"{audio.shape[0]}; copy or record it again")
    return to_mono_rate(audio, file_rate, rate, str(path))


def _wav_declared_frames(path: Path, channels: int) -> int | None:
    """Frames the RIFF ``data`` chunk header announces (libsndfile reads a cut file's remainder without a word);
    None for other formats or a streaming writer's placeholder size."""
    import struct

    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        bits = 0
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind == b"fmt ":
                fmt = f.read(size + size % 2)
                bits = struct.unpack("<H", fmt[14:16])[0] if len(fmt) >= 16 else 0
                continue
            if kind == b"data":
                if bits <= 0 or channels <= 0 or size in (0, 0xFFFFFFFF):
                    return None
                return size // (channels * ((bits + 7) // 8))
            f.seek(size + size % 2, 1)


def to_mono_rate(audio: np.ndarray, source_rate: int, rate: int, what: str = "audio") -> np.ndarray:
    """(samples,) or (samples, channels) at ``source_rate`` -> mono float32 at ``rate``."""
    import soxr

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.size == 0:
        raise AudioInputError(f"{what}: empty audio; record or pass at least a short utterance")
    if not np.isfinite(audio).all():
        raise AudioInputError(f"{what}: audio contains NaN or infinity; check the recording")
    if source_rate <= 0:
        raise AudioInputError(f"{what}: invalid sample rate {source_rate}")
    if source_rate != rate:
        audio = soxr.resample(audio, source_rate, rate, quality="HQ").astype(np.float32)
    return audio


def check_speech(audio: np.ndarray, log: Callable[[str], None], what: str = "input") -> np.ndarray:
    """Refuse a silent utterance, warn about a clipped one; ``audio`` is mono (what ``to_mono_rate`` returns)."""
    if float(np.abs(audio).max()) < SILENCE_PEAK:
        raise AudioInputError(f"{what} is silent (peak below -80 dBFS); check the microphone or the file")
    if np.mean(np.abs(audio) >= CLIP_LEVEL) > 0.001:
        log(f"warning: {what} is clipped (over 0.1% of samples at full scale); lower the input gain")
    return audio


def save_audio(path: str | Path, audio: np.ndarray, rate: int) -> None:
    """16-bit WAV or FLAC by extension, written whole to a temporary name and renamed (never a partial file)."""
    import soundfile as sf

    path = Path(path)
    kind = WRITABLE.get(path.suffix.lower())
    if kind is None:
        raise AudioInputError(f"{path}: cannot write {path.suffix or 'a file without extension'}; "
                              f"use {' or '.join(WRITABLE)}")
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), rate, subtype="PCM_16", format=kind)
    write_bytes(path, buffer.getvalue())
