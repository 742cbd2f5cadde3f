"""`bcaudio fleet` on a local Ray cluster: two replicas of `tiny`, conversations spread, a replica killed mid-turn.

The cluster is started by the module fixture (2 CPUs, a small object store) and shut down at its end. Clients
speak the `bcaudio serve` protocol (benchmarks/serve_load.py's client, or raw sockets where a test must act
in the middle of a turn).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the fleet extra is not installed: pip install 'bcaudio[fleet]'")
from ray import serve  # noqa: E402

from bcaudio.benchmarks.serve_load import free_port, run_client  # noqa: E402
from bcaudio.runtime.fleet.deploy import FleetOptions, replica_status, start, wait_running  # noqa: E402

websockets_sync = pytest.importorskip("websockets.sync.client")
SESSIONS_PER_REPLICA = 3
CHUNK = 1600  # 100 ms of 16 kHz audio per append


@pytest.fixture(scope="module")
def fleet(tiny_package: Path):
    port = free_port()
    ray.init(num_cpus=2, object_store_memory=150 * 1024**2, include_dashboard=False, log_to_driver=False)
    try:
        options = FleetOptions(package=str(tiny_package), device_profile="cpu-2core", replicas=2,
                               sessions_per_replica=SESSIONS_PER_REPLICA, cpus_per_replica=0.5)
        start(options, "127.0.0.1", port)
        assert wait_running(2, 120), replica_status()
        yield f"ws://127.0.0.1:{port}/v1/realtime", port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def question(speech_16k: np.ndarray) -> np.ndarray:
    return (np.concatenate([np.zeros(4000, np.float32), speech_16k]) * 32767).astype(np.int16)


def append(pcm: np.ndarray) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm.tobytes()).decode()})


class Client:
    """One raw connection whose turn runs in a thread, so the test can act while it is answered."""

    def __init__(self, url: str) -> None:
        self.ws = websockets_sync.connect(url, max_size=None, open_timeout=60)
        self.created = json.loads(self.ws.recv(timeout=60))
        self.events: list[dict] = []
        self.answering = threading.Event()
        self.thread: threading.Thread | None = None

    def start_turn(self, question: np.ndarray) -> None:
        self.thread = threading.Thread(target=self._turn, args=(question,), daemon=True)
        self.thread.start()

    def _turn(self, question: np.ndarray) -> None:
        audio = np.concatenate([question, np.zeros(16000 * 2, np.int16)])
        for i in range(0, audio.size, CHUNK):
            self.ws.send(append(audio[i:i + CHUNK]))
        try:
            while True:
                event = json.loads(self.ws.recv(timeout=120))
                self.events.append(event)
                if event["type"] == "response.created":
                    self.answering.set()
                if event["type"] in ("response.done", "error"):
                    return
        except Exception as exc:  # what a closed socket looks like: recorded, the test reads it
            self.events.append({"type": "_closed", "error": repr(exc)})

    def outcome(self) -> dict:
        assert self.thread is not None
        self.thread.join(timeout=180)
        assert not self.thread.is_alive(), "the turn never ended"
        return self.events[-1]

    def close(self) -> None:
        self.ws.close()


def test_conversations_spread_over_both_replicas_and_every_turn_completes(fleet, question: np.ndarray) -> None:
    url, _ = fleet
    clients = [Client(url) for _ in range(4)]
    try:
        assert {c.created["type"] for c in clients} == {"session.created"}
        assert len({c.created["replica"] for c in clients}) == 2, "both replicas hold conversations"
        assert len({c.created["session_id"] for c in clients}) == 4, "session ids are unique across replicas"
        for c in clients:
            c.start_turn(question)
        for c in clients:
            done = c.outcome()
            assert done["type"] == "response.done" and done["status"] == "completed", done
            assert any(e["type"] == "response.audio.delta" for e in c.events)
    finally:
        for c in clients:
            c.close()


def test_a_killed_replica_loses_only_its_own_clients_who_reconnect_at_once(fleet, question: np.ndarray) -> None:
    url, _ = fleet
    clients = [Client(url) for _ in range(4)]
    try:
        victim_pid = clients[0].created["replica_pid"]
        victims = [c for c in clients if c.created["replica_pid"] == victim_pid]
        others = [c for c in clients if c.created["replica_pid"] != victim_pid]
        assert victims and others, "the four conversations are on both replicas"
        for c in clients:
            c.start_turn(question)
        assert victims[0].answering.wait(120), "the victim's answer never started"
        os.kill(victim_pid, signal.SIGKILL)
        for c in victims:
            last = c.outcome()
            assert last["type"] == "error" and last["error"]["code"] == "replica_lost", last
        for c in others:
            done = c.outcome()
            assert done["type"] == "response.done" and done["status"] == "completed", done
            assert not any(e["type"] == "error" for e in c.events), "the other replica's clients never notice"
        retry = run_client(url, question, turns=1, timeout=120)  # what a kiosk page does after replica_lost
        assert not retry.failure and [t.status for t in retry.turns] == ["completed"], retry.failure
    finally:
        for c in clients:
            c.close()
    assert wait_running(2, 120), f"Ray Serve did not restart the replica: {replica_status()}"


def sessions_now(port: int) -> int:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30).read())["sessions"]


def test_a_full_fleet_refuses_a_new_client_clearly_and_frees_slots_on_disconnect(fleet) -> None:
    url, port = fleet
    clients = [Client(url) for _ in range(2 * SESSIONS_PER_REPLICA)]
    try:
        assert all(c.created["type"] == "session.created" for c in clients)
        with websockets_sync.connect(url, open_timeout=60) as extra:
            refusal = json.loads(extra.recv(timeout=30))
        assert refusal["type"] == "error" and refusal["error"]["code"] == "server_full", refusal
    finally:
        for c in clients:
            c.close()
    deadline = time.monotonic() + 60
    while sessions_now(port) and time.monotonic() < deadline:  # the ingress frees a slot when its relay ends
        time.sleep(0.2)
    assert sessions_now(port) == 0, "closed clients keep their slots"


def test_one_metrics_view_holds_ray_and_bcaudio_series_of_both_replicas(fleet, question: np.ndarray) -> None:
    url, port = fleet
    turn = run_client(url, question, turns=1, timeout=120)
    assert not turn.failure, turn.failure
    deadline, text = time.monotonic() + 150, ""
    while time.monotonic() < deadline:  # Ray's metrics agent exports every few seconds
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        if "ray_bcaudio_fleet_turns_total" in text:
            break
        time.sleep(2)
    turns = [line for line in text.splitlines() if line.startswith("ray_bcaudio_fleet_turns_total")]
    assert turns, "bcaudio's turn counter is in the view: " + ", ".join(
        sorted({line.split("{")[0] for line in text.splitlines() if "bcaudio" in line})[:20])
    assert sum(float(line.rsplit(" ", 1)[1]) for line in turns) >= 1
    assert "ray_serve_" in text, "Ray's own serve metrics are in the same view"
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30).read())
    assert health["capacity"] == 2 * SESSIONS_PER_REPLICA


@pytest.mark.parametrize(("extra", "message"), [
    (["--model", "/nonexistent"], "not a model package"),
    (["--host", "0.0.0.0"], "not a loopback address"),
    (["--replicas", "0"], "argument --replicas: 0 is out of range: must be in 1..1024"),
    (["--cpus-per-replica", "0"], "argument --cpus-per-replica: 0 is out of range: must be in (0, 1024]"),
    (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas"),
    (["--target-sessions", "20"], "--target-sessions"),
])
def test_fleet_arguments_are_refused_in_one_line_before_ray_starts(tiny_package: Path, extra: list[str],
                                                                  message: str) -> None:
    args = ["--model", str(tiny_package), *extra] if extra[0] != "--model" else extra
    command = [str(Path(sys.executable).parent / "bcaudio"), "fleet", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr
