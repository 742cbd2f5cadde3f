"""What every connection of a server shares: the package loaded once, its device profile, the compute queues, and
the batch that steps every active conversation's llm and audio head together."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from bcaudio.runtime.audio.turn_detector import SmartTurn
from bcaudio.runtime.audio.vad import find_vad_model
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.batching import BatchScheduler
from bcaudio.runtime.live.conversation import LiveSettings
from bcaudio.runtime.package.profiles import DeviceProfile, resolve_profile
from bcaudio.runtime.package.sessions import PackageSessions
from bcaudio.runtime.package.text_codec import TextCodec
from bcaudio.runtime.serve.scheduler import ComputeScheduler, Lane, LanedSessions


class SharedModel:
    """The ONNX Runtime sessions and tokenizer of one package, opened once; each connection gets its own
    ``VoiceAssistant`` (conversation, KV cache, noise) on them, its runs queued on the one ``ComputeScheduler``.

    With ``batching`` (default: the device profile's ``generation.batching``, on without a profile) every
    conversation's llm and audio-head steps go to one ``BatchScheduler``, whose batched runs are jobs of their own
    lane on the same queue; tokenizer, flow and vocoder runs stay on each connection's lane."""

    def __init__(self, package: str | Path, device_profile: str | DeviceProfile | None = "auto",
                 log: Callable[[str], None] = print, vad_model: str | Path | None = None,
                 batching: bool | None = None) -> None:
        self.package, self.log = Path(package), log
        self.profile = resolve_profile(device_profile, log) if isinstance(device_profile, str) else device_profile
        self.vad_model = Path(vad_model) if vad_model else find_vad_model()
        self._turn_lock = threading.Lock()
        self._turn_detector: SmartTurn | None = None
        if self.profile is not None and self.profile.endpoint.turn_detector:
            self.turn_detector()  # refused now, with the install hint, rather than at a client's first pause
        self.sessions = PackageSessions(self.package, self.profile.session if self.profile else None, log=log)
        self.cfg = self.sessions.cfg
        self.codec = TextCodec(self.package / "tokenizer.json")
        self.scheduler = ComputeScheduler()
        wanted = (self.profile.generation.batching if self.profile else True) if batching is None else batching
        self.batcher = self._batcher() if wanted else None

    def _batcher(self) -> BatchScheduler | None:
        """The batch on the steps queue, or None (with the reason logged) where this package cannot batch."""
        lane = self.scheduler.lane()
        try:
            return BatchScheduler(self.sessions, run_batch=lambda fn: lane.run("batch", fn))
        except ValueError as exc:
            lane.close()
            self.log(f"batching off: {exc}")
            return None

    def turn_detector(self) -> SmartTurn:
        """The Smart Turn classifier, opened on first use and shared: it keeps no state between calls."""
        with self._turn_lock:
            if self._turn_detector is None:
                threshold = self.profile.endpoint.turn_threshold if self.profile else 0.5
                self._turn_detector = SmartTurn(threshold=threshold)
            return self._turn_detector

    def assistant(self, lane: Lane, seed: int = 0) -> VoiceAssistant:
        """A fresh conversation whose every graph run goes through ``lane``."""
        return VoiceAssistant(self.package, self.profile, seed=seed, sessions=LanedSessions(self.sessions, lane),
                              codec=self.codec, log=self.log, scheduler=self.batcher)

    def live_settings(self) -> LiveSettings:
        """Incremental prefill sized by the device profile, as ``bcaudio chat`` sizes it."""
        defaults = LiveSettings()
        if self.profile is None:
            return defaults
        gen = self.profile.generation
        return LiveSettings(self.profile.endpoint, prefill_chunk_ms=gen.prefill_chunk_ms,
                            tokenize_left_context_ms=gen.tokenize_left_context_ms)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.scheduler.stop()
