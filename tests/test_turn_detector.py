"""Smart Turn v3.2 from the installed pipecat-ai wheel (only its ONNX file): features, verdicts, live use.

The fixed example is espeak-ng (en-us, 150 words/min) saying "Can you tell me <1 s pause> the time in
Paris?": cut at the pause it is judged not finished, whole it is finished (p = 0.96). The cut-off's
probability moves with how espeak's 22.05 kHz is taken to 16 kHz: 0.02 when this test was written
(2026-12-01), 0.35 on a fresh install on 2026-12-02 (soxr 1.1.0, HQ; 0.09-0.43 over soxr's qualities on the
same audio), so the test asserts the verdicts with a margin from the 0.5 threshold and soxr is pinned. What the
model gets wrong on espeak-ng (measured, not asserted): questions with espeak's final intonation, such as
the profiler's sentence "Hello, this is a test ... What is the weather like today?" (p = 0.01, "not
finished"), and at 200 words/min most cut-offs are judged finished (p = 0.64-0.98): synthetic prosody is
not what the model was trained on. README "End of turn" has the measured table over voices and rates.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from bcaudio.runtime.audio.turn_detector import MODEL_ENV, MODEL_FILE, SmartTurn, TurnModelError, find_turn_model
from bcaudio.runtime.audio.whisper_features import whisper_log_mel

RATE = 16000
PAUSE_S = 0.2  # the silence the detector sees: the live session asks after ~200 ms of pause


def espeak_ssml(ssml: str, out: Path, voice: str = "en-us", wpm: int = 150) -> np.ndarray:
    import soundfile as sf
    import soxr

    subprocess.run(["espeak-ng", "-m", "-v", voice, "-s", str(wpm), "-w", str(out), ssml], check=True,
                   capture_output=True)
    audio, rate = sf.read(str(out), dtype="float32")
    return soxr.resample(audio, rate, RATE).astype(np.float32)


def split_at_pause(audio: np.ndarray) -> int:
    """Sample where the longest silence inside ``audio`` begins."""
    loud = np.flatnonzero(np.abs(audio) > 1e-3)
    gap = int(np.argmax(np.diff(loud)))
    return int(loud[gap]) + 1


@pytest.fixture(scope="module")
def detector() -> SmartTurn:
    return SmartTurn()


@pytest.fixture(scope="module")
def paused_question(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    out = tmp_path_factory.mktemp("turn") / "q.wav"
    return espeak_ssml("<speak>Can you tell me <break time='1000ms'/> the time in Paris?</speak>", out)


def test_loads_the_model_file_of_the_installed_wheel(detector: SmartTurn) -> None:
    path = find_turn_model()
    assert path.as_posix().endswith(MODEL_FILE) and path.stat().st_size > 8_000_000
    assert detector.path == path
    assert [i.name for i in detector.session.get_inputs()] == ["input_features"]


def test_a_missing_model_is_one_line_naming_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "missing.onnx"))
    with pytest.raises(TurnModelError, match="--no-deps pipecat-ai") as err:
        SmartTurn()
    assert "\n" not in str(err.value)
    with pytest.raises(TurnModelError, match="no such file"):
        SmartTurn(tmp_path / "gone.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(TurnModelError, match="cannot load"):
        SmartTurn(tmp_path / "bad.onnx")


def test_features_equal_transformers_whisper_extractor(paused_question: np.ndarray) -> None:
    from transformers import WhisperFeatureExtractor

    window = np.pad(paused_question, (8 * RATE - paused_question.size, 0))
    ref = WhisperFeatureExtractor(chunk_length=8)(window, sampling_rate=RATE, padding="max_length",
                                                  max_length=8 * RATE, truncation=True, do_normalize=True,
                                                  return_tensors="np").input_features[0]
    ours = whisper_log_mel(window)
    assert ours.shape == ref.shape == (80, 800)
    assert np.abs(ours - ref).max() < 1e-4
    np.testing.assert_array_equal(SmartTurn.features(paused_question)[0], ours)


def test_finished_sentence_and_cut_off_sentence(detector: SmartTurn, paused_question: np.ndarray) -> None:
    pause = np.zeros(int(PAUSE_S * RATE), np.float32)
    cut = paused_question[:split_at_pause(paused_question)]
    whole = np.trim_zeros(paused_question, "b")
    assert detector.probability(np.concatenate([cut, pause])) < detector.threshold - 0.1  # "Can you tell me ..."
    assert detector.probability(np.concatenate([whole, pause])) > 0.8  # "... the time in Paris?"
    assert not detector.finished(np.concatenate([cut, pause])) and detector.finished(np.concatenate([whole, pause]))


def test_live_session_waits_through_a_pause_and_ends_the_turn_early(tmp_path: Path) -> None:
    """Detector on: the 400 ms pause inside the question does not end the turn, the question's end does, well
    before the 640 ms hangover would have."""
    from dataclasses import replace

    from bcaudio.export.checkpoint import init_checkpoint
    from bcaudio.export.package import export_package
    from bcaudio.presets import get_preset
    from bcaudio.runtime.audio.devices import SpeakerOutput
    from bcaudio.runtime.audio.vad import EndpointSettings
    from bcaudio.runtime.generation.assistant import VoiceAssistant
    from bcaudio.runtime.live.conversation import LiveSession, LiveSettings, drive_from_audio

    ssml = "<speak>Can you tell me <break time='400ms'/> the time in Paris?</speak>"
    question = espeak_ssml(ssml, tmp_path / "q.wav")
    audio = np.concatenate([np.zeros(RATE // 2, np.float32), question, np.zeros(2 * RATE, np.float32)])
    export_package(init_checkpoint(get_preset("tiny"), tmp_path / "ckpt", seed=1), tmp_path / "pkg",
                   progress=lambda _: None)
    assistant = VoiceAssistant(tmp_path / "pkg", log=lambda _: None)
    endpoint = replace(EndpointSettings(), turn_detector=True)
    session = LiveSession(assistant, SpeakerOutput(assistant.sample_rate), LiveSettings(endpoint, prefill_chunk_ms=640))
    drive_from_audio(session, audio, RATE)
    session.close()
    assert session.errors == []
    (report,) = session.reports  # one turn: the pause did not cut the question
    assert report.ended_by == "turn_detector"
    voiced = np.flatnonzero(np.abs(audio) > 1e-3)
    assert report.user_seconds > (voiced[-1] - voiced[0]) / RATE  # the utterance holds the whole question
    assert report.felt - report.latency < endpoint.end_ms / 1000  # the wait for the decision beat the hangover


def test_a_greeting_alone_ends_the_turn_unless_the_utterance_must_be_long_enough(detector: SmartTurn,
                                                                                 tmp_path: Path) -> None:
    """The demo's question as espeak-ng says it (voice en, 175 words/min): Smart Turn calls "Hello!" finished
    (p = 0.91 with soxr 1.1.0; en-us, which this test used until 2026-12-02, gives 0.18 there), so
    the turn ends inside the question; asked only once the utterance has lasted 1 s, it ends after the question
    (README, "End of turn": the greetings table)."""
    from bcaudio.runtime.audio.end_of_turn import first_end_of_turn
    from bcaudio.runtime.audio.vad import EndpointSettings, SileroVad
    from bcaudio.runtime.audio.voicing import last_voiced_sample

    speech = espeak_ssml("<speak>Hello! Can you tell me what the weather will be like tomorrow?</speak>",
                         tmp_path / "q.wav", voice="en", wpm=175)
    audio = np.concatenate([np.zeros(RATE // 2), speech, np.zeros(2 * RATE)]).astype(np.float32)
    audio += 0.002 * np.random.default_rng(1).standard_normal(audio.size).astype(np.float32)
    truth, vad = last_voiced_sample(audio), SileroVad()
    plain = first_end_of_turn(audio, vad, EndpointSettings(turn_detector=True), detector)
    assert plain.by == "turn_detector" and plain.decision < truth  # cut off after the greeting
    waited = first_end_of_turn(audio, vad, EndpointSettings(turn_detector=True, turn_min_ms=1000), detector)
    assert truth <= waited.decision < truth + RATE  # after the question, well within a second
