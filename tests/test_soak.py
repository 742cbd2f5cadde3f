"""All day on one process: many turns on one assistant, many live turns, many sessions opened and closed.

A kiosk runs one process for days. After a warm-up (first-run allocations of every graph, the arena's
growth), resident memory, the thread count and the open file descriptors must stay flat: a leaked thread
pool, an unclosed file or a cache that grows per turn shows up here long before it takes the box down.
Bounds: threads and file descriptors exactly as after the warm-up (+2 fds of slack for the logging and
import machinery); resident memory in use (read after ``malloc_trim``) within ``RSS_DRIFT_MB``.
Measured drift is printed (``pytest -s``); docs/robustness.md has the figures of the last run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import os
from pathlib import Path

import numpy as np
import pytest

from bcaudio.runtime.audio.devices import SpeakerOutput
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.speech_loop import collect
from bcaudio.runtime.live.conversation import LiveSession, LiveSettings, drive_from_audio

RSS_DRIFT_MB = 40.0
PLATEAU_MB = 4.0
FD_SLACK = 2
STOPS = {"eos", "max_rounds", "max_tokens", "done"}


def release_free_heap() -> None:
    """Hand glibc's free heap pages back to the OS, so resident memory counts what is in use: every live session
    (its VAD and turn-detector graphs) makes and frees loader buffers that glibc keeps for reuse: ~190 MB on
    `tiny`, flat from about the 30th assistant on (docs/robustness.md), which would otherwise read as a leak."""
    libc = ctypes.util.find_library("c")
    if libc and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)


def resources() -> dict[str, float]:
    """Resident MB in use, OS threads (onnxruntime's pools included) and open file descriptors of this process."""
    gc.collect()
    release_free_heap()
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "threads": int(status["Threads"]),
            "fds": len(os.listdir("/proc/self/fd"))}


def assert_flat(start: dict[str, float], end: dict[str, float], what: str) -> None:
    drift = end["rss_mb"] - start["rss_mb"]
    print(f"\n{what}: RSS {start['rss_mb']:.1f} -> {end['rss_mb']:.1f} MB (drift {drift:+.1f} MB, bound "
          f"{RSS_DRIFT_MB:.0f}), threads {start['threads']:.0f} -> {end['threads']:.0f}, fds {start['fds']:.0f} -> "
          f"{end['fds']:.0f}")
    assert end["threads"] == start["threads"], (start, end)
    assert end["fds"] <= start["fds"] + FD_SLACK, (start, end)
    assert drift <= RSS_DRIFT_MB, (start, end)


@pytest.fixture(scope="module")
def pkg(tiny_package: Path) -> Path:
    return tiny_package


def short_answers(assistant: VoiceAssistant) -> VoiceAssistant:
    """Cap every phase so a turn is a few steps: the soak counts turns, not tokens."""
    gen = assistant.loop.gen
    assistant.loop.gen = dataclasses.replace(
        gen, first_text=dataclasses.replace(gen.first_text, max_new_tokens=6),
        text=dataclasses.replace(gen.text, max_new_tokens=4), audio=dataclasses.replace(gen.audio, max_new_tokens=6),
        text_only=dataclasses.replace(gen.text_only, max_new_tokens=8), asr=dataclasses.replace(gen.asr,
                                                                                                max_new_tokens=8),
        max_rounds=2)
    return assistant


def test_300_turns_on_one_assistant(pkg: Path, speech_16k: np.ndarray) -> None:
    """Every mode in turn, on a 400-position context that overflows every few turns (older turns dropped)."""
    assistant = short_answers(VoiceAssistant(pkg, seed=0, flow_steps=2, context_tokens=400, log=lambda _: None))
    question = speech_16k[:24000]  # 1.5 s: 18 codes
    modes = (lambda: assistant.respond(question, 16000), lambda: assistant.respond_text(question, 16000),
             lambda: assistant.transcribe(question, 16000), lambda: assistant.speak("Hello there, friend."))
    reasons: dict[str, int] = {}
    overflows = 0
    start = None
    for turn in range(300):
        before = len(assistant.loop.context)
        result = collect(modes[turn % len(modes)](), assistant.cfg.generation.crossfade_samples)
        assert result.reason in STOPS, (turn, result.reason)
        reasons[result.reason] = reasons.get(result.reason, 0) + 1
        overflows += len(assistant.loop.context) < before
        assert len(assistant.loop.context) <= 400 and assistant.backend.position == len(assistant.loop.context)
        if turn == 19:
            start = resources()
    assert overflows >= 10, overflows  # the context filled up and was cut back again and again
    assert_flat(start, resources(), f"300 turns ({reasons}, {overflows} context overflows)")


def test_50_live_turns(pkg: Path, speech_16k: np.ndarray) -> None:
    """The live path (microphone callback, VAD, incremental prefill, speaker) for 50 spoken turns, fed in blocks of
    10 turns with resources read after each block.

    The first version fed 40 turns in one call and grew 18-49 MB: ``drive_from_audio`` keeps every block the
    speaker played until the call returns (13 MB of 20 ms arrays for 40 turns, then their concatenation), and the
    heap keeps those pages after they are freed. The session itself is flat: 200 turns in one call with the played
    blocks discarded grew 0.7 MB (docs/robustness.md). So each block's record is small, and the bound is on the
    plateau as well: the last two blocks may not grow by more than ``PLATEAU_MB``."""
    assistant = short_answers(VoiceAssistant(pkg, seed=0, flow_steps=2, context_tokens=600, log=lambda _: None))
    session = LiveSession(assistant, SpeakerOutput(assistant.sample_rate), LiveSettings(prefill_chunk_ms=640))
    rng = np.random.default_rng(0)
    utterance = np.concatenate([speech_16k[:24000], np.zeros(int(1.8 * 16000), np.float32)])
    blocks = []
    try:
        for _ in range(5):
            audio = np.tile(utterance, 10)
            drive_from_audio(session, audio + (0.003 * rng.standard_normal(audio.size)).astype(np.float32), 16000)
            blocks.append(resources())
    finally:
        session.close()
    assert session.errors == []
    assert len(session.reports) == 50, [r.index for r in session.reports]
    print("\nRSS after each block of 10 live turns: " + ", ".join(f"{b['rss_mb']:.1f}" for b in blocks) + " MB")
    assert blocks[-1]["rss_mb"] - blocks[-3]["rss_mb"] <= PLATEAU_MB, blocks
    assert_flat(blocks[0], blocks[-1], "50 live turns")


def test_100_sessions_opened_and_closed(pkg: Path) -> None:
    """ONNX Runtime sessions and live sessions made and dropped: no thread pool, worker thread or file may outlive
    them (each InferenceSession owns an intra-op pool; each LiveSession a worker thread and a VAD session)."""
    from bcaudio.runtime.package.sessions import PackageSessions

    assistant = VoiceAssistant(pkg, log=lambda _: None)

    def one() -> None:
        PackageSessions(pkg, graphs=("llm", "audio_head"), log=lambda _: None)
        LiveSession(assistant, SpeakerOutput(assistant.sample_rate)).close()

    for _ in range(20):
        one()
    start = resources()
    for _ in range(80):
        one()
    assert_flat(start, resources(), "100 package and live sessions opened and closed")


@pytest.mark.slow
def test_100_assistants_opened_and_closed(pkg: Path) -> None:
    """Whole assistants (all six graphs, sha256-verified) with a live session each, made and dropped 100 times."""

    def one() -> None:
        assistant = VoiceAssistant(pkg, log=lambda _: None)
        LiveSession(assistant, SpeakerOutput(assistant.sample_rate)).close()

    for _ in range(10):
        one()
    start = resources()
    for _ in range(90):
        one()
    assert_flat(start, resources(), "100 assistants opened and closed")
