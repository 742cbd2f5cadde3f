"""Felt latency: the last voiced sample found on the audio, the speaker's queue, and a live turn measured
against the speaker's own output (an independent clock: the file driver's output is aligned with its input)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bcaudio.export.checkpoint import init_checkpoint
from bcaudio.export.package import export_package
from bcaudio.presets import get_preset
from bcaudio.runtime.audio.devices import SpeakerOutput
from bcaudio.runtime.audio.voicing import WINDOW, last_voiced_sample
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.live.conversation import LiveSession, LiveSettings, drive_from_audio
from bcaudio.runtime.package.profiles import load_profile
from bcaudio.runtime.profiling.felt import playback, worker_schedule
from bcaudio.runtime.profiling.profiler import Profiler

RATE = 16000


def synthetic_turn(voice_end: int, noise_rms: float, seed: int = 0) -> np.ndarray:
    """Room noise, then a voiced sound (harmonics of 140 Hz, syllable-rate envelope) from 0.3 s that stops at
    sample ``voice_end``, then room noise again."""
    rng = np.random.default_rng(seed)
    total = voice_end + RATE
    audio = noise_rms * rng.standard_normal(total)
    t = np.arange(int(0.3 * RATE), voice_end) / RATE
    voiced = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    audio[int(0.3 * RATE):voice_end] += 0.2 * voiced * envelope
    return audio.astype(np.float32)


@pytest.mark.parametrize("noise_rms", [0.0, 1e-3, 1e-2], ids=["digital-silence", "quiet-room", "noisy-room"])
def test_last_voiced_sample_is_found_on_the_audio(noise_rms: float) -> None:
    for voice_end in (int(1.7 * RATE) + 37, int(2.3 * RATE) + WINDOW - 5):
        found = last_voiced_sample(synthetic_turn(voice_end, noise_rms))
        assert found is not None and abs(found - voice_end) <= 16  # 1 ms
    assert last_voiced_sample(np.zeros(RATE, np.float32)) is None
    assert last_voiced_sample(np.zeros(100, np.float32)) is None


def test_player_queue_and_running_dry() -> None:
    # first piece at 100 ms plays from the next 20 ms block; the second arrives with 0.3 s still queued; the
    # third arrives 100 ms after the queue ran out and plays from the next block
    pb = playback([105.0, 320.0, 920.0], [0.5, 0.2, 0.5])
    assert pb.start_ms == 120.0
    assert pb.min_buffer_s == 0.0 and pb.underrun_ms == pytest.approx(920.0 - 820.0)
    assert [q for t, q in pb.points if t == 320.0] == pytest.approx([0.3, 0.5])  # before and after the second
    smooth = playback([0.0, 100.0, 200.0], [0.3, 0.3, 0.3])
    assert smooth.underrun_ms == 0 and smooth.min_buffer_s == pytest.approx(0.2)
    assert playback([], []) is None and playback([10.0], [1.0]).min_buffer_s is None
    assert worker_schedule([0.0, 1.0, 1.5], [1.2, 0.1, 0.1]) == [0.0, 1.2, 1.5]


@pytest.fixture(scope="module")
def pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("felt")
    export_package(init_checkpoint(get_preset("tiny"), root / "ckpt", seed=1), root / "pkg", progress=lambda _: None)
    return root / "pkg"


def cut_speech(speech: np.ndarray) -> tuple[np.ndarray, int]:
    """The espeak-ng sentence cut hard inside its last loud window: the last voiced sample is the cut."""
    rms = np.sqrt(np.mean(speech[: speech.size // WINDOW * WINDOW].reshape(-1, WINDOW) ** 2, axis=1))
    loud = np.flatnonzero(rms > 0.5 * rms.max())
    cut = int(loud[-1]) * WINDOW + WINDOW // 2
    return speech[:cut].copy(), cut


def test_live_turn_reports_the_latency_the_speaker_output_shows(pkg: Path, speech_16k: np.ndarray) -> None:
    speech, cut = cut_speech(speech_16k)
    lead = int(0.5 * RATE)
    audio = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(2 * RATE, np.float32)])
    assert last_voiced_sample(audio) == lead + cut
    assistant = VoiceAssistant(pkg, log=lambda _: None)
    session = LiveSession(assistant, SpeakerOutput(assistant.sample_rate), LiveSettings(prefill_chunk_ms=640))
    out = drive_from_audio(session, audio, RATE, realtime=True)
    session.close()
    (report,) = session.reports
    assert report.ended_by == "hangover" and report.felt is not None and report.latency is not None
    heard = np.flatnonzero(np.abs(out) > 0)[0] / assistant.sample_rate - (lead + cut) / RATE  # on the audio clock
    assert report.felt == pytest.approx(heard, abs=0.06)  # 3 blocks: frame and block grids differ
    gap = report.felt - report.latency  # the wait before the decision: the hangover and the VAD's lag
    assert 0.64 <= gap <= 0.64 + 0.2


def test_profiler_felt_latency_starts_at_the_last_voiced_sample(pkg: Path, speech_16k: np.ndarray) -> None:
    speech, cut = cut_speech(speech_16k)
    profile = load_profile("cpu-2core")
    profiler = Profiler(pkg, profile, log=lambda _: None, live_prefill=True)
    m = profiler.turn(speech, 0)
    heard = m.heard
    assert heard.ended_by in ("hangover", "turn_detector")
    # the utterance the model heard holds the whole input up to the cut, then the silence waited
    voice_end_in_utterance = heard.audio.size + heard.voice_end_s * RATE
    assert last_voiced_sample(heard.audio) == round(voice_end_in_utterance)
    assert np.array_equal(heard.audio[round(voice_end_in_utterance) - cut:round(voice_end_in_utterance)], speech)
    if heard.ended_by == "hangover":
        assert profile.endpoint.end_ms <= m.voice_gap_ms <= profile.endpoint.end_ms + 200
    assert m.felt_ms == pytest.approx(m.voice_gap_ms + m.playback.start_ms)
    assert m.playback.start_ms >= m.first_audio_ms + m.backlog_ms
    assert m.speaking_spans and all(s.end <= m.backlog_ms / 1000 + 1e-9 for s in m.speaking_spans)
