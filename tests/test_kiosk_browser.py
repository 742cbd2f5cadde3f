"""The kiosk page in a real browser: Debian's chromium, driven by Playwright, hears an espeak-ng question
through Chromium's fake microphone, shows the transcript and plays an answer, hands-free and push-to-talk.

Chromium comes from the project's sysdeps step (tools/install-sysdeps.sh); Playwright only drives it
(``executable_path``), it downloads no browser. ``BCAUDIO_KIOSK_PNG=docs/kiosk.png`` keeps the screenshot
for the README.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bcaudio.benchmarks.serve_load import free_port, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def page_server(tiny_package: Path):
    port = free_port()
    proc = start_server(str(tiny_package), port, "--max-sessions", "2")
    yield port
    proc.terminate()
    proc.wait(timeout=30)


def _browser_args(mic: Path, audio: np.ndarray) -> list[str]:
    """Chromium's flags for a fake microphone playing ``audio`` (16 kHz) once from when the page opens it."""
    if CHROMIUM is None:
        pytest.fail("chromium is required: run `make test` (tools/install-sysdeps.sh installs it)")
    sf.write(mic, audio.astype(np.float32), 16000, subtype="PCM_16")
    return ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic}%noloop", "--autoplay-policy=no-user-gesture-required",
            "--no-sandbox"]


def test_kiosk_page_hears_a_question_and_plays_an_answer(page_server: int, speech_16k: np.ndarray,
                                                         tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    # 1 s of silence, the question, then silence for the VAD's hangover
    args = _browser_args(tmp_path / "mic.wav", np.concatenate([np.zeros(16000), speech_16k, np.zeros(16000 * 4)]))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            logs: list[str] = []
            page.on("console", lambda m: logs.append(m.text))
            page.goto(f"http://127.0.0.1:{page_server}/")
            assert page.locator("#start-button").is_visible()
            page.click("#start-button")
            page.wait_for_function("window.kiosk.state === 'listening' || window.kiosk.state === 'hearing'",
                                   timeout=30_000)
            page.wait_for_function("window.kiosk.lastTimings !== null && window.kiosk.playedPieces > 0",
                                   timeout=120_000)
            state = page.evaluate("window.kiosk")
            shot = tmp_path / "kiosk.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert state["errors"] == [], (state["errors"], logs)
    whos = [e["who"] for e in state["transcript"]]
    assert whos[:2] == ["user", "assistant"], state["transcript"]
    assert state["transcript"][0]["text"].startswith("(you spoke ")
    spoken = float(state["transcript"][0]["text"].split()[2])
    assert abs(spoken - speech_16k.size / 16000) < 1.0  # the page's 16 kHz resampling kept the question's length
    assert state["audioDeltas"] > 0 and state["scheduledSamples"] > 0 and state["playedPieces"] > 0
    assert state["lastTimings"]["first_audio_ms"] is not None
    keep = os.environ.get("BCAUDIO_KIOSK_PNG")
    if keep:
        tmp = Path(keep + ".tmp")
        shutil.copyfile(shot, tmp)
        tmp.rename(keep)


def test_push_to_talk_sends_only_while_the_button_is_held(page_server: int, speech_16k: np.ndarray,
                                                         tmp_path: Path) -> None:
    """Push-to-talk: the page sends audio only while "Hold to talk" is pressed and the release ends the utterance
    (no VAD hangover); the utterance the server heard lasts as long as the button was held, and it is answered."""
    from playwright.sync_api import sync_playwright

    lead = 5.0  # seconds of silence before the question: the page's start-up on a loaded machine
    args = _browser_args(tmp_path / "mic.wav",
                         np.concatenate([np.zeros(int(16000 * lead)), speech_16k, np.zeros(16000 * 6)]))
    question_s = speech_16k.size / 16000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            page.goto(f"http://127.0.0.1:{page_server}/")
            # the mode is chosen under the start overlay (a script click): the fake microphone plays from when the
            # page opens it, so the page must be in push-to-talk from its first sample on
            page.evaluate("document.getElementById('mode-ptt').click()")
            page.click("#start-button")
            opened = time.monotonic()  # the fake microphone starts about now
            page.wait_for_function("window.kiosk.state === 'listening'", timeout=30_000)
            assert page.locator("#talk").is_visible() and page.evaluate("window.kiosk.mode") == "push-to-talk"
            page.locator("#talk").hover()
            page.mouse.down()
            pressed = time.monotonic()
            page.wait_for_timeout(1000 * (lead + question_s + 0.5 - (pressed - opened)))
            page.mouse.up()
            held = time.monotonic() - pressed
            page.wait_for_function("window.kiosk.lastTimings !== null && window.kiosk.playedPieces > 0",
                                   timeout=120_000)
            state = page.evaluate("window.kiosk")
        finally:
            browser.close()
    assert state["errors"] == [], state["errors"]
    assert [e["who"] for e in state["transcript"]][:2] == ["user", "assistant"], state["transcript"]
    spoken = float(state["transcript"][0]["text"].split()[2])
    assert abs(spoken - held) < 0.6, (spoken, held)  # what was sent: the held span, not the whole microphone
    assert state["lastTimings"]["vad_hangover_ms"] == 0 and state["lastTimings"]["first_audio_ms"] is not None
    assert state["responses"] == 1 and state["playedPieces"] > 0
