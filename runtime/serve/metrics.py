"""The server's Prometheus metrics, in a registry of its own (two apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bcaudio.runtime.serve.connection import TurnSummary

LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
RTF_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("bcaudio_active_sessions", "WebSocket sessions open now", registry=r)
        self.refused = Counter("bcaudio_refused_connections", "connections refused, by reason", ["reason"],
                               registry=r)
        self.turns = Counter("bcaudio_turns", "answers finished, by status", ["status"], registry=r)
        self.first_audio = Histogram("bcaudio_first_audio_seconds", "end of speech (the VAD's decision) to the first "
                                     "answer audio sent", buckets=LATENCY_BUCKETS, registry=r)
        self.felt_first_audio = Histogram("bcaudio_felt_first_audio_seconds", "last voiced sample (VAD hangover "
                                          "included) to the first answer audio sent", buckets=LATENCY_BUCKETS,
                                          registry=r)
        self.rtf = Histogram("bcaudio_turn_rtf", "answer generation time over answer audio length",
                             buckets=RTF_BUCKETS, registry=r)
        self.errors = Counter("bcaudio_errors", "error events sent to clients, by code", ["code"], registry=r)

    def turn(self, summary: TurnSummary) -> None:
        self.turns.labels(summary.status).inc()
        if summary.timings.get("first_audio_ms") is not None:
            self.first_audio.observe(summary.timings["first_audio_ms"] / 1000)
            self.felt_first_audio.observe(summary.timings["felt_first_audio_ms"] / 1000)
        if summary.rtf is not None:
            self.rtf.observe(summary.rtf)

    def render(self) -> bytes:
        return generate_latest(self.registry)
