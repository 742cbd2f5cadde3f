"""``VoiceAssistant``: a model package answering speech with text and speech, on ONNX Runtime, without torch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from bcaudio.config import GenerationConfig, StreamSettings
from bcaudio.runtime.audio.files import AudioInputError, check_speech, to_mono_rate
from bcaudio.runtime.generation.audio_chunks import chunk_audio, token_frames
from bcaudio.runtime.generation.batching import BatchedBackend, BatchScheduler
from bcaudio.runtime.generation.speech_loop import Event, SpeechLoop
from bcaudio.runtime.package.manifest import GRAPHS, ManifestError
from bcaudio.runtime.package.ort_backend import OrtBackend
from bcaudio.runtime.package.profiles import DeviceProfile, resolve_profile
from bcaudio.runtime.package.sessions import PackageSessions, SessionSettings
from bcaudio.runtime.package.text_codec import TextCodec

# The graphs each mode runs: a package exported with `--graphs` serves only the modes it has all graphs for.
MODE_GRAPHS = {"respond": GRAPHS, "respond_text": ("audio_tokenizer", "llm"), "transcribe": ("audio_tokenizer", "llm"),
               "speak": ("llm", "audio_head", "flow_prenet", "flow_estimator", "vocoder")}
MODE_NAMES = {"respond": "respond", "respond_text": "respond --text-only", "transcribe": "transcribe",
              "speak": "speak"}


class VoiceAssistant:
    """One conversation on one package; each call continues it (the KV cache of earlier turns is reused)."""

    def __init__(self, package: str | Path, device_profile: str | DeviceProfile | None = "auto", *,
                 system_prompt: str | None = None, seed: int = 0, generation: GenerationConfig | None = None,
                 settings: SessionSettings | None = None, flow_steps: int | None = None,
                 context_tokens: int | None = None, stream: StreamSettings | None = None,
                 log: Callable[[str], None] = print, sessions: PackageSessions | None = None,
                 codec: TextCodec | None = None, scheduler: BatchScheduler | None = None) -> None:
        """``device_profile`` (a shipped name, a .toml path, ``auto`` for this machine, or None for the package's own
        defaults) gives threads, flow steps, context and segment streaming, so what is deployed is what was profiled;
        ``settings``, ``flow_steps``, ``context_tokens`` and ``stream`` override it one by one. ``sessions`` and
        ``codec`` let several conversations share one loaded package (``bcaudio serve``). With ``scheduler`` (one
        per package on a box serving several conversations) the conversation uses the scheduler's sessions and its
        llm and audio-head steps are batched with the other conversations' (runtime/generation/batching.py), its
        other graphs run on ``sessions`` (default: the scheduler's); ``close`` leaves the batch."""
        self.package = Path(package)
        self.profile = resolve_profile(device_profile, log) if isinstance(device_profile, str) else device_profile
        if self.profile is not None:
            gen = self.profile.generation
            settings = settings or self.profile.session
            flow_steps, context_tokens = flow_steps or gen.flow_steps, context_tokens or gen.context_tokens
            stream = gen.stream() if stream is None else stream
        if scheduler is not None:
            sessions = sessions or scheduler.sessions
        self.sessions = sessions or PackageSessions(self.package, settings, log=log)
        self.cfg = self.sessions.cfg
        if "llm" not in self.sessions.sessions:
            raise ManifestError(f"{self.package} has no llm graph (it has {', '.join(self.sessions.sessions)}); "
                                "every mode needs it: re-export with `bcaudio export` (all graphs)")
        self.log = log
        self.codec = codec or TextCodec(self.package / "tokenizer.json")
        self.backend: OrtBackend | BatchedBackend = (
            scheduler.backend(seed, flow_steps, self.sessions) if scheduler else
            OrtBackend(self.sessions, seed=seed, flow_steps=flow_steps))
        generation = generation or self.cfg.generation
        if stream is not None:
            generation = dataclasses.replace(generation, stream=stream)
        if system_prompt is not None:
            generation = dataclasses.replace(generation, system_prompt=system_prompt)
        self.loop = SpeechLoop(self.cfg, self.backend, self.codec, seed=seed, generation=generation,
                               max_context=context_tokens)

    def reset(self) -> None:
        """Forget the conversation (the next customer): the next turn starts again from the system prompt, on a
        KV cache back at its initial size; the loaded sessions stay."""
        self.loop.truncate(0)
        self.backend.reset()

    def close(self) -> None:
        """Leave the scheduler's batch, if in one (a step in flight fails now), then end the loop's decode worker."""
        if isinstance(self.backend, BatchedBackend):
            self.backend.close()
        self.loop.close()

    @property
    def sample_rate(self) -> int:
        """Rate of the answer audio."""
        return self.cfg.vocoder.sampling_rate

    def prepare(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Any rate, mono or (samples, channels) -> 16 kHz mono, refusing input that cannot be an utterance."""
        return check_speech(to_mono_rate(audio, sample_rate, self.cfg.frontend.sampling_rate), self.log)

    def require(self, mode: str) -> None:
        """Refuse a mode whose graphs this package lacks, naming them and the modes it can serve."""
        missing = [g for g in MODE_GRAPHS[mode] if g not in self.sessions.sessions]
        if missing:
            can = [MODE_NAMES[m] for m, gs in MODE_GRAPHS.items() if all(g in self.sessions.sessions for g in gs)]
            raise ManifestError(f"{self.package} lacks graph(s) {', '.join(missing)}, which {MODE_NAMES[mode]} needs "
                                f"(it can serve: {', '.join(can) or 'no mode'}); export them with `bcaudio export "
                                f"--graphs {','.join(MODE_GRAPHS[mode])}`")

    def tokenize(self, audio16k: np.ndarray) -> np.ndarray:
        """16 kHz mono -> (frames, K) codes; over 30 s is cut into 30 s chunks, each tokenized on its own.

        Input whose codes cannot fit the context window with the prompt and a first answer is refused here,
        before any tokenizing: the loop would otherwise end the turn at once with ``context_full``."""
        chunks = [c for c in chunk_audio(audio16k, self.cfg.frontend) if token_frames(c.size, self.cfg) > 0]
        if not chunks:
            raise AudioInputError("input is shorter than one audio token (60 ms); speak a little longer")
        needed = sum(token_frames(c.size, self.cfg) for c in chunks) + self.loop.turn_overhead()
        if needed > self.loop.max_context:
            seconds = audio16k.size / self.cfg.frontend.sampling_rate
            fe = self.cfg.frontend
            per_second = fe.sampling_rate / (fe.hop_length * self.cfg.encoder.stride * self.cfg.bridge.avg_pooler)
            fits = (self.loop.max_context - self.loop.turn_overhead()) / per_second
            raise AudioInputError(f"{seconds:.0f} s of audio needs {needed} positions; the context holds "
                                  f"{self.loop.max_context}: split the recording (at most {fits:.0f} s per turn)")
        if len(chunks) > 1:
            self.log(f"input is {audio16k.size / self.cfg.frontend.sampling_rate:.1f} s: "
                     f"tokenized in {len(chunks)} chunks of at most {self.cfg.frontend.max_audio_seconds} s")
        return self.backend.tokenize(audio16k)

    def respond(self, audio: np.ndarray, sample_rate: int) -> Iterator[Event]:
        """Speech in -> events: text deltas and audio segments as they are made, then the turn end."""
        self.require("respond")
        return self.loop.respond(self.tokenize(self.prepare(audio, sample_rate)))

    def respond_text(self, audio: np.ndarray, sample_rate: int) -> Iterator[Event]:
        self.require("respond_text")
        return self.loop.respond_text(self.tokenize(self.prepare(audio, sample_rate)))

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> Iterator[Event]:
        self.require("transcribe")
        return self.loop.transcribe(self.tokenize(self.prepare(audio, sample_rate)))

    def speak(self, text: str) -> Iterator[Event]:
        self.require("speak")
        if not text.strip():
            raise AudioInputError("nothing to speak: the text is empty")
        return self.loop.speak(text)
