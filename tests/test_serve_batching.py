"""Continuous batching inside `bcaudio serve`: concurrent clients' llm and audio-head steps run as one batch, and
each client gets the greedy answer it gets from a server that runs every step on its own.

Two servers on the tiny package: one with `--no-batching` answers each question alone (the reference), one with
batching answers four clients whose turns overlap (the first two speak at once; each later one starts while the
previous is mid-answer, so conversations join and leave the batch between steps). Questions differ in length, so
answers differ and cross-talk would show.
A client that disconnects mid-answer leaves the batch at once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bcaudio.benchmarks.serve_load import free_port, start_server

websockets_sync = pytest.importorskip("websockets.sync.client")
CLIENTS = 4


@pytest.fixture(scope="module")
def questions(speech_16k: np.ndarray) -> list[np.ndarray]:
    pcm = (np.concatenate([np.zeros(4000, np.float32), speech_16k]) * 32767).astype(np.int16)
    return [pcm[: pcm.size - i * 8000] for i in range(CLIENTS)]


def _server(pkg: Path, tmp: Path, *extra: str):
    port = free_port()
    proc = start_server(str(pkg), port, "--max-sessions", "8", *extra, log=tmp / f"serve-{port}.log")
    return proc, port


def _health(port: int) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())


@contextlib.contextmanager
def _connect(port: int) -> Iterator:
    with websockets_sync.connect(f"ws://127.0.0.1:{port}/v1/realtime", max_size=None, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        yield ws


def _speak(ws, question: np.ndarray) -> None:
    audio = np.concatenate([question, np.zeros(24000, np.int16)])
    for i in range(0, audio.size, 1600):
        ws.send(json.dumps({"type": "input_audio_buffer.append",
                            "audio": base64.b64encode(audio[i:i + 1600].tobytes()).decode()}))


def _answer(ws, started: threading.Event | None = None) -> dict:
    """Events up to ``response.done``; -> its status and text, the text deltas and the audio samples received."""
    text, samples = "", 0
    while True:
        event = json.loads(ws.recv(timeout=120))
        if event["type"] == "response.audio.delta":
            samples += event["samples"]
            if started is not None:
                started.set()
        elif event["type"] == "response.text.delta":
            text += event["delta"]
        elif event["type"] == "response.done":
            return {"status": event["status"], "text": event["text"], "deltas": text, "samples": samples}


def _greedy_turn(port: int, question: np.ndarray, started: threading.Event | None = None) -> dict:
    with _connect(port) as ws:
        ws.send(json.dumps({"type": "session.update", "session": {"sampling": {"temperature": 0}}}))
        while json.loads(ws.recv(timeout=30))["type"] != "session.updated":
            pass
        _speak(ws, question)
        return _answer(ws, started)


def test_batched_clients_get_the_answers_they_get_alone(tiny_package: Path, questions: list[np.ndarray],
                                                        tmp_path: Path) -> None:
    proc, port = _server(tiny_package, tmp_path, "--no-batching")
    try:
        assert _health(port)["batch"] is None
        alone = [_greedy_turn(port, q) for q in questions]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len({a["text"] for a in alone}) > 1  # the questions' answers differ: a mix-up would show
    proc, port = _server(tiny_package, tmp_path, "--batching")
    try:
        results: list[dict | None] = [None] * CLIENTS
        speaking = [threading.Event() for _ in range(CLIENTS)]
        together = threading.Barrier(2)

        def client(i: int) -> None:
            if i < 2:
                together.wait(60)  # the first two speak at once: their answers overlap whatever the box's load
            else:
                speaking[i - 1].wait(60)  # join while the previous client is mid-answer
            results[i] = _greedy_turn(port, questions[i], speaking[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        deadline = time.monotonic() + 10
        while _health(port)["batch"]["conversations"] and time.monotonic() < deadline:
            time.sleep(0.05)
        batch = _health(port)["batch"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for i, (got, want) in enumerate(zip(results, alone, strict=True)):
        assert got is not None and got["status"] == "completed", i
        assert (got["text"], got["deltas"], got["samples"]) == (want["text"], want["deltas"], want["samples"]), i
    assert batch["largest_llm_batch"] >= 2 and batch["largest_head_batch"] >= 2  # steps really were shared
    assert batch["conversations"] == 0  # every client left: its row is free


def test_disconnect_mid_answer_leaves_the_batch_at_once(tiny_package: Path, questions: list[np.ndarray],
                                                        tmp_path: Path) -> None:
    """A client gone mid-answer frees its row (healthz counts it out) while another stays, whose next turn is
    answered."""
    proc, port = _server(tiny_package, tmp_path, "--batching")
    try:
        with _connect(port) as staying:
            with _connect(port) as leaving:
                _speak(leaving, questions[1])
                while json.loads(leaving.recv(timeout=60))["type"] != "response.audio.delta":
                    pass
                assert _health(port)["batch"]["conversations"] == 2
            start = time.monotonic()
            while _health(port)["batch"]["conversations"] > 1 and time.monotonic() - start < 5:
                time.sleep(0.02)
            held = time.monotonic() - start
            assert held < 2.0, f"the closed client still held its row {held:.1f} s after disconnecting"
            _speak(staying, questions[0])
            answer = _answer(staying)
        assert answer["status"] == "completed" and answer["samples"] > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
