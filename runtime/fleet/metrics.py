"""bcaudio's serving metrics as Ray metrics: every replica reports them with its own tags, and Ray's metrics
agent on each node exports them beside Ray's own, so one Prometheus scrape of the cluster sees the fleet.

The names follow ``bcaudio serve``'s (runtime/serve/metrics.py) with a ``bcaudio_fleet_`` prefix; Ray adds
``ray_`` in front and tags each series with the replica that reported it.
"""

from __future__ import annotations

from ray.util import metrics

from bcaudio.runtime.serve.connection import TurnSummary
from bcaudio.runtime.serve.metrics import LATENCY_BUCKETS, RTF_BUCKETS


class FleetMetrics:
    def __init__(self, replica: str) -> None:
        tags = {"replica": replica}
        self.sessions = metrics.Gauge("bcaudio_fleet_active_sessions", "conversations held by this replica",
                                      tag_keys=("replica",))
        self.turns = metrics.Counter("bcaudio_fleet_turns", "answers finished, by status",
                                     tag_keys=("replica", "status"))
        self.first_audio = metrics.Histogram("bcaudio_fleet_first_audio_seconds", "end of speech (the VAD's "
                                             "decision) to the first answer audio sent",
                                             boundaries=list(LATENCY_BUCKETS), tag_keys=("replica",))
        self.felt_first_audio = metrics.Histogram("bcaudio_fleet_felt_first_audio_seconds", "last voiced sample "
                                                  "to the first answer audio sent", boundaries=list(LATENCY_BUCKETS),
                                                  tag_keys=("replica",))
        self.rtf = metrics.Histogram("bcaudio_fleet_turn_rtf", "answer generation time over answer audio length",
                                     boundaries=list(RTF_BUCKETS), tag_keys=("replica",))
        self.errors = metrics.Counter("bcaudio_fleet_errors", "error events sent to clients, by code",
                                      tag_keys=("replica", "code"))
        for metric in (self.sessions, self.turns, self.first_audio, self.felt_first_audio, self.rtf, self.errors):
            metric.set_default_tags(tags)

    def turn(self, summary: TurnSummary) -> None:
        self.turns.inc(tags={"status": summary.status})
        if summary.timings.get("first_audio_ms") is not None:
            self.first_audio.observe(summary.timings["first_audio_ms"] / 1000)
            self.felt_first_audio.observe(summary.timings["felt_first_audio_ms"] / 1000)
        if summary.rtf is not None:
            self.rtf.observe(summary.rtf)

    def error(self, code: str) -> None:
        self.errors.inc(tags={"code": code})
