"""The server's parts on their own: the compute queue's fairness and cancellation, the client's playback clock,
message parsing, and who may connect."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest

from bcaudio.runtime.serve.protocol import (
    DEFAULT_VAD,
    Limits,
    ProtocolError,
    SessionConfig,
    apply_update,
    decode_pcm16,
    encode_pcm16,
    parse_event,
)
from bcaudio.runtime.serve.remote_speaker import RemoteSpeaker
from bcaudio.runtime.serve.scheduler import ComputeScheduler, LaneClosed
from bcaudio.runtime.serve.security import bind_problem, origin_ok, token_ok


def test_active_lanes_take_turns_step_by_step() -> None:
    """Steps run in arrival order, and a lane whose step just ran queues behind the lanes already waiting: with
    every active turn waiting for its next step, each gets one step per round."""
    scheduler = ComputeScheduler()
    blocker, lanes = scheduler.lane(), [scheduler.lane() for _ in range(3)]
    release, order = threading.Event(), []
    threading.Thread(target=lambda: blocker.run("audio_head", release.wait), daemon=True).start()

    def until(n: int) -> None:
        deadline = time.monotonic() + 5
        while scheduler.waiting < n and time.monotonic() < deadline:
            time.sleep(0.001)

    time.sleep(0.05)  # the blocker is running: nothing waits
    threads = [threading.Thread(target=lambda: [lanes[0].run("llm", lambda: order.append(0)) for _ in range(2)])]
    threads[0].start()
    until(1)
    for i in (1, 2):
        threads.append(threading.Thread(target=lambda i=i: lanes[i].run("llm", lambda: order.append(i))))
        threads[-1].start()
        until(i + 1)
    release.set()
    for t in threads:
        t.join(timeout=5)
    scheduler.stop()
    assert order == [0, 1, 2, 0]
    assert [lane.steps for lane in lanes] == [2, 1, 1]


def test_closing_a_lane_fails_its_waiting_step_at_once() -> None:
    scheduler = ComputeScheduler()
    busy, other = scheduler.lane(), scheduler.lane()
    release = threading.Event()
    threading.Thread(target=lambda: busy.run("audio_head", release.wait), daemon=True).start()
    time.sleep(0.05)
    outcome: list[BaseException | None] = []

    def waiting() -> None:
        try:
            other.run("llm", lambda: None)
            outcome.append(None)
        except LaneClosed as exc:
            outcome.append(exc)

    t = threading.Thread(target=waiting)
    t.start()
    time.sleep(0.05)
    assert scheduler.waiting == 1
    other.close()
    t.join(timeout=2)
    assert isinstance(outcome[0], LaneClosed) and scheduler.waiting == 0 and other.steps == 0
    with pytest.raises(LaneClosed):
        other.run("llm", lambda: None)
    release.set()
    scheduler.stop()


def test_a_decode_runs_beside_the_steps_and_waits_only_for_decodes() -> None:
    """The decode graphs have their own compute thread: a vocoder run in flight does not hold up any lane's llm
    step (a connection's streamed window is decoded beside its next frames), but it does hold up another
    decode, which runs when it ends; never more than one graph per thread."""
    scheduler = ComputeScheduler()
    decoding, stepping, other = scheduler.lane(), scheduler.lane(), scheduler.lane()
    release, order = threading.Event(), []
    first = threading.Thread(target=lambda: decoding.run("vocoder", lambda: (release.wait(5), order.append("voc"))))
    first.start()
    time.sleep(0.05)
    assert stepping.run("llm", lambda: order.append("llm") or threading.current_thread().name) == "bcaudio-compute"
    second = threading.Thread(target=lambda: other.run("flow_estimator", lambda: order.append("flow")))
    second.start()
    time.sleep(0.05)
    assert order == ["llm"] and scheduler.waiting == 1  # the flow step waits for the vocoder's thread
    release.set()
    first.join(5)
    second.join(5)
    scheduler.stop()
    assert order == ["llm", "voc", "flow"] and scheduler.jobs_run == 3


def test_a_step_error_reaches_its_own_worker_only() -> None:
    scheduler = ComputeScheduler()
    lane = scheduler.lane()
    with pytest.raises(ZeroDivisionError):
        lane.run("llm", lambda: 1 / 0)
    assert lane.run("llm", lambda: 42) == 42
    scheduler.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_remote_speaker_marks_what_the_client_has_played() -> None:
    clock, sent = Clock(), []
    speaker = RemoteSpeaker(sent.append, 24000, clock=clock)
    heard: list[str] = []
    speaker.on_first_sample = lambda: heard.append("first")
    turn = speaker.begin_turn()
    speaker.enqueue(turn, np.zeros(24000, np.float32), mark="a")  # plays 100.0 - 101.0
    clock.now = 100.5
    speaker.enqueue(turn, np.zeros(12000, np.float32), mark="b")  # queued behind: 101.0 - 101.5
    assert heard == ["first"] and speaker.busy and speaker.played == []
    clock.now = 101.2
    assert speaker.played == ["a"]
    clock.now = 103.0  # a gap: the queue ran dry, the next piece starts when it arrives
    assert speaker.played == ["a", "b"] and not speaker.busy
    speaker.enqueue(turn, np.zeros(24000, np.float32), mark="c")  # 103.0 - 104.0
    clock.now = 103.5
    speaker.stop()  # barge-in: c was half played, so it does not count as heard
    clock.now = 110.0
    assert speaker.played == ["a", "b"] and not speaker.busy
    speaker.enqueue(turn, np.zeros(100, np.float32), mark="late")  # of the stopped turn: dropped
    assert len(sent) == 3 and speaker.played == ["a", "b"]


def test_messages_are_parsed_or_refused_with_a_code() -> None:
    limits = Limits(max_message_bytes=100)
    assert parse_event('{"type": "response.cancel"}', limits) == {"type": "response.cancel"}
    for raw, code in (("x" * 101, "message_too_large"), ("{", "invalid_json"), ("3", "invalid_event"),
                      ('{"type": "nope"}', "unknown_event"), (b"\x00", "binary_not_supported")):
        with pytest.raises(ProtocolError) as err:
            parse_event(raw, limits)
        assert err.value.code == code
    pcm = (np.sin(np.arange(480) / 5) * 0.5).astype(np.float32)
    back = decode_pcm16({"audio": encode_pcm16(pcm)})
    assert np.abs(back - pcm).max() < 1 / 32767
    with pytest.raises(ProtocolError) as err:
        decode_pcm16({"audio": base64.b64encode(b"abc").decode()})
    assert err.value.code == "invalid_audio_format"


def test_session_update_is_applied_whole_or_not_at_all() -> None:
    config = SessionConfig(instructions="hi", turn_detection=dict(DEFAULT_VAD))
    new = apply_update(config, {"mode": "text", "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                                "sampling": {"temperature": 0}}, Limits())
    assert new.mode == "text" and new.turn_detection["silence_duration_ms"] == 500 and new.temperature == 0
    assert config.mode == "respond"
    for bad in ({"mode": "text", "voice": "yes"}, {"turn_detection": {"type": "server_vad", "threshold": 2}},
                {"sampling": {"top_p": 0}}, {"colour": 1}, {"input_sample_rate": 48000}):
        with pytest.raises(ProtocolError):
            apply_update(new, bad, Limits())
    assert apply_update(new, {"turn_detection": None}, Limits()).turn_detection is None


def test_who_may_connect() -> None:
    assert bind_problem("127.0.0.1", False, None) is None and bind_problem("::1", False, None) is None
    assert "--token" in bind_problem("0.0.0.0", True, None)
    assert "TLS" in bind_problem("192.0.2.7", False, "t" * 16)
    assert bind_problem("0.0.0.0", True, "t" * 16) is None
    assert token_ok(None, {}, {})
    assert token_ok("secret", {"authorization": "Bearer secret"}, {}) and token_ok("secret", {}, {"token": "secret"})
    assert not token_ok("secret", {}, {"token": "secreT"}) and not token_ok("secret", {}, {})
    assert origin_ok(None, "box:8765", []) and origin_ok("https://box:8765", "box:8765", [])
    assert not origin_ok("https://evil.example", "box:8765", [])
    assert origin_ok("https://kiosk.shop", "box:8765", ["https://kiosk.shop"])
