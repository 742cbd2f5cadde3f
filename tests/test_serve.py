"""`bcaudio serve`: the protocol's answers to faults, many sessions on one model, limits and refusals.

One server process on a `tiny` package serves the whole module (as a kiosk box would), with a token
so that a wrong one can be tried; clients are the benchmark's (benchmarks/serve_load.py) or raw sockets.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bcaudio.benchmarks.serve_load import free_port, percentile, process_stats, run_client, run_load, start_server

websockets_sync = pytest.importorskip("websockets.sync.client")
TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def pkg(tiny_package: Path) -> Path:
    return tiny_package


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-log") / "server.log"


@pytest.fixture(scope="module")
def server(pkg: Path, server_log: Path):
    port = free_port()
    proc = start_server(str(pkg), port, "--max-sessions", "8", "--token", TOKEN, "--max-message-bytes", "65536",
                        "--log-format", "json", log=server_log)
    yield proc, port
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def question(speech_16k: np.ndarray) -> np.ndarray:
    return (np.concatenate([np.zeros(4000, np.float32), speech_16k]) * 32767).astype(np.int16)


def url(port: int, token: str = TOKEN) -> str:
    return f"ws://127.0.0.1:{port}/v1/realtime?token={token}"


def connect(port: int, token: str = TOKEN):
    ws = websockets_sync.connect(url(port, token), max_size=None, open_timeout=30)
    return ws


def recv_until(ws, kind: str, timeout: float = 60) -> list[dict]:
    events = []
    deadline = time.monotonic() + timeout
    while True:
        event = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        events.append(event)
        if event["type"] == kind:
            return events


def append(pcm: np.ndarray) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm.tobytes()).decode()})


def test_protocol_faults_get_an_error_and_the_session_keeps_working(server, question: np.ndarray) -> None:
    _, port = server
    with connect(port) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        faults = {
            "{not json": "invalid_json",
            json.dumps([1, 2]): "invalid_event",
            json.dumps({"type": "response.dance"}): "unknown_event",
            json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode()}):
                "invalid_audio_format",
            json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}): "invalid_audio",
            json.dumps({"type": "session.update", "session": {"input_sample_rate": 44100}}): "invalid_audio_format",
            json.dumps({"type": "session.update", "session": {"mode": "sing"}}): "invalid_session",
            json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 70000}): "message_too_large",
        }
        for message, code in faults.items():
            ws.send(message)
            event = json.loads(ws.recv(timeout=10))
            assert event["type"] == "error" and event["error"]["code"] == code, (message[:40], event)
            assert "\n" not in event["error"]["message"] and event["error"]["message"]
        ws.send(b"\x00\x01")
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "binary_not_supported"
        # still usable: a spoken question is answered
        ws.send(json.dumps({"type": "session.update", "session": {"sampling": {"temperature": 0}}}))
        tail = np.zeros(24000, np.int16)
        for i in range(0, question.size + tail.size, 1600):
            ws.send(append(np.concatenate([question, tail])[i:i + 1600]))
        events = recv_until(ws, "response.done")
        kinds = [e["type"] for e in events]
        assert "session.updated" in kinds and "input_audio_buffer.speech_started" in kinds
        assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("response.created")
        done = events[-1]
        assert done["status"] == "completed" and "response.audio.delta" in kinds
        t = done["timings"]
        assert t["vad_hangover_ms"] == 640 and done["ended_by"] in ("hangover", "turn_detector")
        if done["ended_by"] == "hangover":  # the profile's Smart Turn may end it sooner, at a pause it judges final
            assert 640 <= t["voice_gap_ms"] < 1500  # the hangover plus the tail the VAD still took for speech
        assert t["felt_first_audio_ms"] == pytest.approx(t["voice_gap_ms"] + t["first_audio_ms"], abs=0.1)
        assert 0 < t["first_text_ms"] <= t["generated_ms"] and t["first_audio_ms"] <= t["generated_ms"]


def test_wrong_token_is_refused_and_logged(server, server_log: Path) -> None:
    proc, port = server
    with connect(port, token="wrong-token-wrong-token") as ws:
        event = json.loads(ws.recv(timeout=10))
        assert event["type"] == "error" and event["error"]["code"] == "unauthorized"
        with pytest.raises(Exception) as closed:
            ws.recv(timeout=10)
        assert getattr(closed.value, "rcvd", None) is not None and closed.value.rcvd.code == 1008
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'bcaudio_refused_connections_total{reason="unauthorized"} 1.0' in metrics
    lines = [json.loads(line) for line in server_log.read_text().splitlines() if line.startswith("{")]
    refused = [r for r in lines if r.get("code") == "unauthorized"]
    assert refused and refused[0]["level"] == "warning" and refused[0]["client"].startswith("127.0.0.1:")
    assert TOKEN not in server_log.read_text()


def test_bad_origin_is_refused(server) -> None:
    _, port = server
    ws = websockets_sync.connect(url(port), origin="http://evil.example", open_timeout=30)
    with ws:
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "origin_not_allowed"


def test_disconnect_mid_answer_frees_its_work(server, question: np.ndarray) -> None:
    _, port = server
    health = f"http://127.0.0.1:{port}/healthz"
    with connect(port) as ws:
        ws.recv(timeout=30)
        tail = np.zeros(24000, np.int16)
        for i in range(0, question.size + tail.size, 1600):
            ws.send(append(np.concatenate([question, tail])[i:i + 1600]))
        recv_until(ws, "response.audio.delta")
    deadline = time.monotonic() + 10
    while json.loads(urllib.request.urlopen(health, timeout=5).read())["sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    state = json.loads(urllib.request.urlopen(health, timeout=5).read())
    assert state["sessions"] == 0 and state["queued_steps"] == 0
    # and the server keeps serving
    result = run_client(url(port), question, 1)
    assert not result.failure and result.turns[0].status == "completed"


def test_cancel_and_reset(server, question: np.ndarray) -> None:
    _, port = server
    with connect(port) as ws:
        ws.recv(timeout=30)
        ws.send(json.dumps({"type": "session.update", "session": {"mode": "tts"}}))
        recv_until(ws, "session.updated")
        ws.send(json.dumps({"type": "response.create", "text": "Good morning, how can I help you today?"}))
        recv_until(ws, "response.audio.delta")
        ws.send(json.dumps({"type": "response.cancel"}))
        done = recv_until(ws, "response.done")[-1]
        assert done["status"] == "cancelled"
        ws.send(json.dumps({"type": "conversation.reset"}))
        recv_until(ws, "conversation.reset.done")
        ws.send(append(question[:1600]))
        assert recv_until(ws, "error")[-1]["error"]["code"] == "invalid_state"  # tts mode takes no audio


def test_eight_sessions_three_turns_then_a_ninth_is_refused(server, question: np.ndarray) -> None:
    proc, port = server
    stats: list[dict[str, int]] = []
    refusals: list[dict] = []

    def between_rounds(i: int) -> None:
        stats.append(process_stats(proc.pid))
        if i == 0:  # all 8 sessions are open: a ninth client must be told, not left hanging
            with connect(port) as ws:
                refusals.append(json.loads(ws.recv(timeout=10)))

    results = run_load(url(port), question, 8, 3, on_round=between_rounds, timeout=180)
    assert [r.failure for r in results] == [""] * 8
    assert refusals[0]["type"] == "error" and refusals[0]["error"]["code"] == "server_full"
    sessions = {r.session for r in results}
    assert len(sessions) == 8
    for r in results:
        assert r.foreign_events == 0 and len(r.turns) == 3 and r.errors == []
        for t in r.turns:
            assert t.status == "completed" and t.response_id.startswith(r.session.replace("sess_", "resp_") + "_")
            assert t.audio_samples > 0 and abs(t.audio_samples - t.timings["answer_audio_ms"] * 24) <= 12
            assert t.text.strip() == t.text_deltas.strip()  # all of it was played, so all of it is kept
    first, last = stats[0], stats[-1]
    assert last["Threads"] <= first["Threads"], stats
    # kB: no runaway growth per turn. Some growth is expected: each turn lengthens 8 conversations, so the next
    # prefills and batches are larger and onnxruntime's arenas grow to them (8 sessions x 10 turns went 427 -> 507
    # MB in steps of up to 27 MB, 2026-12-03) until the context limit; keeping every turn's audio or cache would
    # add far more. The long-run bounds are tests/test_soak.py's.
    assert stats[2]["VmRSS"] <= stats[1]["VmRSS"] * 1.05 + 30_000, stats
    assert last["VmRSS"] <= first["VmRSS"] * 1.10 + 50_000, stats
    first_audio = [t.timings["first_audio_ms"] for r in results for t in r.turns]
    p50, p90 = percentile(first_audio, 50), percentile(first_audio, 90)
    print(f"\n8 sessions x 3 turns on tiny, audio faster than real time: first audio p50 {p50:.0f} ms, "
          f"p90 {p90:.0f} ms; server RSS {first['VmRSS'] // 1024} -> {last['VmRSS'] // 1024} MB, "
          f"threads {first['Threads']} -> {last['Threads']}")


def test_non_loopback_bind_needs_tls_and_token(pkg: Path) -> None:
    bcaudio = str(Path(sys.executable).parent / "bcaudio")
    done = subprocess.run([bcaudio, "serve", "--model", str(pkg), "--host", "0.0.0.0"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--certfile/--keyfile (TLS) and --token" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def speak(ws, question: np.ndarray, tail_seconds: float = 1.5) -> None:
    audio = np.concatenate([question, np.zeros(int(tail_seconds * 16000), np.int16)])
    for i in range(0, audio.size, 1600):
        ws.send(append(audio[i:i + 1600]))


def test_text_and_asr_modes_answer_in_text_only(server, question: np.ndarray) -> None:
    _, port = server
    with connect(port) as ws:
        ws.recv(timeout=30)
        for mode in ("text", "asr"):
            ws.send(json.dumps({"type": "session.update", "session": {"mode": mode}}))
            assert recv_until(ws, "session.updated")[-1]["session"]["mode"] == mode
            speak(ws, question)
            events = recv_until(ws, "response.done")
            kinds = {e["type"] for e in events}
            assert "response.audio.delta" not in kinds and events[-1]["status"] == "completed", mode
            deltas = "".join(e["delta"] for e in events if e["type"] == "response.text.delta")
            assert events[-1]["text"] == deltas.strip() and events[-1]["timings"]["first_audio_ms"] is None


def test_push_to_talk_commit_ends_the_utterance(server, question: np.ndarray) -> None:
    _, port = server
    with connect(port) as ws:
        ws.recv(timeout=30)
        ws.send(json.dumps({"type": "session.update", "session": {"turn_detection": None}}))
        recv_until(ws, "session.updated")
        for i in range(0, question.size, 1600):  # no silence after it: only the commit ends it
            ws.send(append(question[i:i + 1600]))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = recv_until(ws, "response.done")
        stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
        assert abs(stopped["audio_ms"] - 1000 * question.size / 16000) < 200
        assert events[-1]["status"] == "completed" and events[-1]["timings"]["vad_hangover_ms"] == 0


def test_barge_in_keeps_only_what_was_heard(server, question: np.ndarray) -> None:
    _, port = server
    with connect(port) as ws:
        ws.recv(timeout=30)
        ws.send(json.dumps({"type": "session.update", "session": {"mode": "tts"}}))
        recv_until(ws, "session.updated")
        ws.send(json.dumps({"type": "response.create", "text": "Good morning. The museum opens at nine, the cafe "
                            "at ten, and the garden at eleven. Tickets are at the desk."}))
        events = recv_until(ws, "response.audio.delta")
        time.sleep(1.5)  # the client "plays" what has been sent so far
        ws.send(json.dumps({"type": "response.cancel"}))
        events += recv_until(ws, "response.done")
        done = events[-1]
        texts = "".join(e["delta"] for e in events if e["type"] == "response.text.delta")
        # pieces sent but not yet played when the cancel came are not kept; the kept text is a prefix of the sent
        assert done["status"] == "cancelled" and 0 < done["played_segments"] < done["segments"]
        assert done["text"] and texts.startswith(done["text"])


def test_idle_sessions_are_closed_and_long_utterances_cut(pkg: Path, question: np.ndarray, tmp_path: Path) -> None:
    port = free_port()
    proc = start_server(str(pkg), port, "--idle-timeout", "8", "--max-turn-seconds", "2", log=tmp_path / "log")
    try:
        with websockets_sync.connect(f"ws://127.0.0.1:{port}/v1/realtime", open_timeout=30) as ws:
            ws.recv(timeout=30)
            speak(ws, question)
            events = recv_until(ws, "response.done")
            cut = [e for e in events if e["type"] == "error"]
            assert cut and cut[0]["error"]["code"] == "turn_too_long"
            stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
            assert stopped["audio_ms"] <= 2200
            assert recv_until(ws, "error", timeout=20)[-1]["error"]["code"] == "idle_timeout"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "argument --port: 70000 is out of range: must be in 0..65535"),
    (["--max-sessions", "0"], "argument --max-sessions: 0 is out of range: must be in 1..256"),
    (["--idle-timeout", "nan"], "argument --idle-timeout: 'nan' is not a finite number"),
    (["--token", "short"], "--token must be at least 16 characters"),
    (["--certfile", "/nonexistent.pem", "--keyfile", "/nonexistent.key"],
     "argument --certfile: /nonexistent.pem: no such file"),
    (["--certfile", __file__], "--certfile and --keyfile go together"),
])
def test_bad_serve_arguments_are_one_line_before_any_work(pkg: Path, args: list[str], message: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    from bcaudio.cli import main

    assert main(["serve", "--model", str(pkg), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
