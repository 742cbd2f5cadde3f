"""Concurrent kiosk clients against ``bcaudio serve``: the load test's client and the serving benchmark.

Each client is one WebSocket session speaking the same recorded question ``turns`` times, as a kiosk
microphone would (``realtime``: 100 ms appends at the pace of speech, silence streamed while the
answer plays) or as fast as the server takes it. A client checks what it gets back: every response
event carries one of its own response ids (no cross-talk), the audio and text it received add up to
what ``response.done`` reports.

    python -m bcaudio.benchmarks.serve_load --model small-mixed --device-profile cpu-2core \
        --sessions 1,2,4,8 --turns 3 --realtime --out docs/serve-small-cpu-2core.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHUNK = 1600  # 100 ms of 16 kHz audio per append
TAIL_SECONDS = 1.5  # silence after the question (the VAD needs its hangover of it)


@dataclass
class ClientTurn:
    session: str
    response_id: str
    status: str
    timings: dict
    text: str
    text_deltas: str
    audio_samples: int
    wall_seconds: float


@dataclass
class ClientResult:
    session: str = ""
    turns: list[ClientTurn] = field(default_factory=list)
    cut_in: int = 0  # answers to a pause inside a question, stopped by the rest of it
    foreign_events: int = 0  # response events whose id this client never created
    errors: list[dict] = field(default_factory=list)
    failure: str = ""


def _append(pcm: np.ndarray) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm.tobytes()).decode()})


def run_client(url: str, question: np.ndarray, turns: int, realtime: bool = False,
               between_turns: Callable[[int], None] = lambda _: None, timeout: float = 120.0) -> ClientResult:
    """One session: ``turns`` spoken questions, each answered before the next; ``between_turns(i)`` after turn i."""
    from websockets.sync.client import connect

    result = ClientResult()
    silence = np.zeros(CHUNK, np.int16)
    try:
        with connect(url, max_size=None, open_timeout=30) as ws:
            created = json.loads(ws.recv(timeout=30))
            if created.get("type") != "session.created":
                result.failure = f"refused: {created}"
                return result
            result.session = created["session_id"]
            mine: set[str] = set()
            for turn in range(turns):
                result.turns.append(_turn(ws, question, silence, realtime, mine, result, timeout))
                between_turns(turn)
    except Exception as exc:  # reported, so a load run shows which client failed and why
        result.failure = f"{type(exc).__name__}: {exc}"
    return result


def _turn(ws, question: np.ndarray, silence: np.ndarray, realtime: bool, mine: set[str], result: ClientResult,
          timeout: float) -> ClientTurn:
    start = time.perf_counter()
    audio = np.concatenate([question, np.zeros(int(TAIL_SECONDS * 16000), np.int16)])
    chunks = [audio[i:i + CHUNK] for i in range(0, audio.size, CHUNK)]
    state = {"text": "", "samples": 0, "done": None}
    sent = 0
    while state["done"] is None:
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"no response.done within {timeout:g} s")
        if sent < len(chunks) or realtime:
            due = start + sent * CHUNK / 16000
            if not realtime or time.perf_counter() >= due:
                ws.send(_append(chunks[sent] if sent < len(chunks) else silence))
                sent += 1
        wait = max(0.0, start + sent * CHUNK / 16000 - time.perf_counter()) if realtime else (
            0.0 if sent < len(chunks) else 1.0)
        try:
            raw = ws.recv(timeout=wait)
        except TimeoutError:
            continue
        _receive(json.loads(raw), mine, result, state)
        if state["done"] is not None and state["done"]["status"] == "interrupted" and sent < len(chunks):
            # The server answered a pause inside the question (e.g. the turn detector took "Hello!" as a whole
            # turn) and the rest of the question barged in: that answer is not this turn's.
            state.update(text="", samples=0, done=None)
            result.cut_in += 1
    done = state["done"]
    return ClientTurn(result.session, done["response_id"], done["status"], done["timings"], done["text"],
                      state["text"], state["samples"], time.perf_counter() - start)


def _receive(event: dict, mine: set[str], result: ClientResult, state: dict) -> None:
    kind = event["type"]
    if kind == "response.created":
        mine.add(event["response_id"])
    elif kind == "error":
        result.errors.append(event["error"])
    rid = event.get("response_id")
    if rid is not None and rid not in mine:
        result.foreign_events += 1
        return
    if kind == "response.text.delta":
        state["text"] += event["delta"]
    elif kind == "response.audio.delta":
        state["samples"] += len(base64.b64decode(event["delta"])) // 2
    elif kind == "response.done":
        state["done"] = event


def run_load(url: str, question: np.ndarray, sessions: int, turns: int, realtime: bool = False,
             on_round: Callable[[int], None] = lambda _: None, timeout: float = 120.0) -> list[ClientResult]:
    """``sessions`` clients at once; all finish turn i before any starts turn i + 1, then ``on_round(i)`` runs."""
    barrier = threading.Barrier(sessions, action=lambda: on_round(rounds.pop(0)))
    rounds = list(range(turns))

    def wait(_: int) -> None:
        barrier.wait(timeout=timeout)

    results: list[ClientResult] = [ClientResult() for _ in range(sessions)]

    def client(i: int) -> None:
        results[i] = run_client(url, question, turns, realtime, wait, timeout)
        if results[i].failure:
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(results: list[ClientResult], wall: float) -> dict:
    turns = [t for r in results for t in r.turns]
    first = [t.timings["first_audio_ms"] for t in turns if t.timings.get("first_audio_ms") is not None]
    felt = [t.timings["felt_first_audio_ms"] for t in turns if t.timings.get("felt_first_audio_ms") is not None]
    rtf = [t.timings["generated_ms"] / t.timings["answer_audio_ms"] for t in turns
           if t.timings.get("answer_audio_ms") and t.timings.get("generated_ms") is not None]
    audio = sum(t.timings.get("answer_audio_ms") or 0 for t in turns) / 1000
    return {"sessions": len(results), "turns": len(turns), "failures": [r.failure for r in results if r.failure],
            "answers_cut_in": sum(r.cut_in for r in results),
            "first_audio_ms_p50": percentile(first, 50), "first_audio_ms_p90": percentile(first, 90),
            "felt_first_audio_ms_p50": percentile(felt, 50), "felt_first_audio_ms_p90": percentile(felt, 90),
            "rtf_p50": percentile(rtf, 50), "rtf_p90": percentile(rtf, 90), "wall_s": wall,
            "answer_audio_s": audio, "answer_audio_s_per_s": audio / wall if wall else None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, *extra: str, device_profile: str = "auto",
                 log: Path | None = None, startup_seconds: float = 60.0) -> subprocess.Popen:
    """``bcaudio serve`` in a child process logging to ``log`` (default /tmp/bcaudio-serve-PORT.log), returned once
    /healthz answers."""
    import urllib.request

    log = log or Path(f"/tmp/bcaudio-serve-{port}.log")
    cmd = [str(Path(sys.executable).parent / "bcaudio"), "serve", "--model", model, "--port", str(port),
           "--device-profile", device_profile, *extra]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + startup_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bcaudio serve exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"bcaudio serve did not answer /healthz within {startup_seconds:g} s")


def process_stats(pid: int) -> dict[str, int]:
    """RSS (kB) and thread count of a process, from /proc."""
    stats = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            stats[key] = int(value.split()[0])
    return stats


def question_pcm16(path: str | Path | None, scratch: Path) -> np.ndarray:
    """The question as 16 kHz mono int16 (what a browser sends): read through the one audio loader, or spoken by
    espeak-ng into ``scratch`` when no file is given."""
    from bcaudio.runtime.audio.files import load_audio

    if path is None:
        from bcaudio.demo import QUESTION, speak_question

        path = speak_question(scratch)
        print(f"question: {QUESTION!r}")
    audio = load_audio(path, 16000)
    return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


def main(argv: list[str] | None = None) -> None:
    from bcaudio.atomic import write_json
    from bcaudio.cli import validators as v

    p = v.OneLineParser(prog="python -m bcaudio.benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=v.input_folder)
    p.add_argument("--device-profile", default="auto")
    p.add_argument("--input", type=v.input_file, help="question wav, any rate (default: espeak-ng speaks one)")
    p.add_argument("--sessions", type=v.int_list(1, 256), default=(1, 2, 4, 8))
    p.add_argument("--turns", type=v.int_range(1, 1000), default=3)
    p.add_argument("--realtime", action="store_true", help="pace the audio as a microphone does")
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=None,
                   help="pass --batching / --no-batching to the server (default: its device profile's)")
    p.add_argument("--turn-timeout", type=v.float_range(1, 3600), default=120.0,
                   help="seconds a client waits for a turn's answer")
    p.add_argument("--out", type=v.output_file(".json"), help="write the results as JSON here")
    args = p.parse_args(argv)
    question = question_pcm16(args.input, Path(f"/tmp/bcaudio-serve-load-{os.getpid()}.wav"))
    levels = list(args.sessions)
    port = free_port()
    batching = [] if args.batching is None else ["--batching" if args.batching else "--no-batching"]
    proc = start_server(args.model, port, "--max-sessions", str(max(levels)), *batching,
                        device_profile=args.device_profile, startup_seconds=600)
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    rows = []
    try:
        run_load(url, question, 1, 1, args.realtime, timeout=args.turn_timeout)  # warm-up: first runs allocate
        for n in levels:
            start = time.perf_counter()
            results = run_load(url, question, n, args.turns, args.realtime, timeout=args.turn_timeout)
            row = summarize(results, time.perf_counter() - start)
            row.update(process_stats(proc.pid), load_average=os.getloadavg()[0])  # a shared machine says so
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if args.out:
        write_json(args.out, {"model": str(args.model), "device_profile": args.device_profile,
                              "batching": args.batching, "realtime": args.realtime, "turns": args.turns,
                              "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
