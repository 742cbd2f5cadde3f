"""Where a voice turn's time goes: stage spans from the session run observers, per-turn latency metrics.

Every graph run already reports ``(graph, start, end)`` through ``PackageSessions.run_observers``; this
module only adds what the observers cannot see: how many positions each LLM run fed (to tell prefill from
decode), when the first answer token was sampled, and the turn's own clock. The time no graph accounts
for (resampling, sampling, Python) is an explicit ``other`` stage, so the stages sum to the turn; with the
decode overlapped with the frames (``stream_overlap_decode``) two stages run at once and they sum to more.
No torch: this runs on the edge box being profiled.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bcaudio.config import GenerationConfig
from bcaudio.errors import UserError
from bcaudio.runtime.audio.end_of_turn import pre_roll_frames
from bcaudio.runtime.audio.turn_detector import SmartTurn, TurnModelError
from bcaudio.runtime.audio.vad import FRAME, SileroVad, VadModelError
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.speech_loop import AudioSegment, ChooseCode, SpeechLoop, TextDelta, TurnEnd
from bcaudio.runtime.package.ort_backend import OrtBackend
from bcaudio.runtime.package.profiles import DeviceProfile, detect_device
from bcaudio.runtime.package.sessions import PackageSessions
from bcaudio.runtime.profiling.felt import Heard, Playback, hear, playback, worker_schedule
from bcaudio.runtime.profiling.spoken_input import SpokenInput

STAGES = ("encoder", "llm_prefill", "llm_decode", "audio_head", "flow", "vocoder", "other")
GRAPH_STAGE = {"audio_tokenizer": "encoder", "audio_head": "audio_head", "flow_prenet": "flow",
               "flow_estimator": "flow", "vocoder": "vocoder"}
# CPU flags that decide which kernels and recipes are fast; the full flag list is noise in a report
ISA_OF_INTEREST = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx512\w*|avx_vnni\w*|amx\w*|asimd\w*|sve\w*|i8mm|"
                             r"bf16|fphp|asimdhp|neon)$")
Progress = Callable[[str, bool], None]  # (message, done): done lines stay, the others may be overwritten
DEFAULT_SENTENCE = "Hello, this is a latency test of the voice assistant. What is the weather like today?"


@dataclass
class Span:
    """One graph run (or merged run of one stage), in seconds of ``time.perf_counter``."""

    stage: str
    start: float
    end: float


@dataclass
class TurnRecorder:
    """Collects spans and counters for the turn in progress; reset between turns."""

    assistant_token: int
    spans: list[Span] = field(default_factory=list)
    prefill_tokens: int = 0
    decode_tokens: int = 0
    frames: int = 0
    segments: int = 0  # flow + vocoder decodes: a streamed segment is decoded in windows, one each
    prompt_closed: bool = False
    first_token_at: float | None = None
    _feed_len: int = 0

    def reset(self) -> None:
        self.spans.clear()
        self.prefill_tokens = self.decode_tokens = self.frames = self.segments = 0
        self.prompt_closed, self.first_token_at, self._feed_len = False, None, 0

    def feed_started(self, ids: Sequence[int]) -> None:
        """The loop feeds right after sampling, so the first feed after the prompt marks the first token."""
        if self.prompt_closed and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self._feed_len = len(ids)
        if len(ids) > 1:
            self.prefill_tokens += len(ids)
        else:
            self.decode_tokens += 1
        if ids and ids[-1] == self.assistant_token:
            self.prompt_closed = True

    def observe(self, graph: str, start: float, end: float) -> None:
        """A ``PackageSessions.run_observers`` callback."""
        stage = GRAPH_STAGE.get(graph) or ("llm_prefill" if self._feed_len > 1 else "llm_decode")
        self.spans.append(Span(stage, start, end))


class ProfilingBackend(OrtBackend):
    """OrtBackend that tells the recorder the length of each feed and counts frames and segments."""

    def __init__(self, sessions: PackageSessions, recorder: TurnRecorder, seed: int = 0,
                 flow_steps: int | None = None) -> None:
        super().__init__(sessions, seed=seed, flow_steps=flow_steps)
        self.recorder = recorder

    def feed(self, ids: Sequence[int], codes: np.ndarray | None = None, logits: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray]:
        self.recorder.feed_started(list(ids))
        return super().feed(ids, codes, logits)

    def audio_frame(self, hidden: np.ndarray, choose: ChooseCode) -> list[int]:
        self.recorder.frames += 1
        return super().audio_frame(hidden, choose)

    def decode_segment(self, codes: np.ndarray, segment: int, first_code: int = 0,
                       phase: SourcePhase | None = None, flow_steps: int | None = None) -> np.ndarray:
        self.recorder.segments += 1
        return super().decode_segment(codes, segment, first_code, phase, flow_steps)


@dataclass
class TurnMeasure:
    """One measured voice turn; times in ms from the end-of-turn decision, as the live session takes it
    (``felt``: the simulated surroundings of the turn)."""

    index: int
    context_tokens: int  # positions already in the KV cache when the turn began
    input_seconds: float
    total_ms: float
    ttft_ms: float | None
    first_text_event_ms: float | None
    first_audio_ms: float | None
    answer_audio_s: float
    text_tokens: int
    prefill_tokens: int
    decode_tokens: int
    audio_frames: int
    segments: int
    stop: str
    peak_rss_mb: float
    gpu_mem_mb: float | None
    stages_ms: dict[str, float]
    stages_to_first_audio_ms: dict[str, float]
    counts: dict[str, int]  # graph runs per stage
    spans: list[Span]
    start: float
    encoded_seconds: float | None = None  # audio tokenized inside the timed turn, when not all of the input
    fed_while_speaking: int = 0  # positions prefilled before end of speech (live prefill)
    text_tokens_to_first_audio: int | None = None  # the first text round: the model decides its length
    frames_to_first_audio: int | None = None  # the first segment's frames, or its first streamed window's
    heard: Heard | None = None  # the utterance, its last voiced sample and the detector's runs
    backlog_ms: float = 0.0  # prefill of chunks sent while speaking still running at the decision
    speaking_spans: list[Span] = field(default_factory=list)  # graph runs while the user spoke, s from the decision
    playback: Playback | None = None
    cpu_s: float | None = None  # CPU time of the process's threads over the turn
    cores: int = 1  # the cores the process may run on

    @property
    def cores_busy(self) -> float | None:
        """Share of the cores the turn kept busy: near 1 the turn is compute-bound, so no schedule of its stages
        can make it much faster; well below, stages wait on each other (or on a GPU)."""
        return None if self.cpu_s is None else cores_busy(self.cpu_s, self.total_ms / 1000, self.cores)

    @property
    def voice_gap_ms(self) -> float:
        """Last voiced sample -> end-of-turn decision: the hangover or the pause the turn detector judged."""
        return self.heard.voice_gap_ms if self.heard else 0.0

    @property
    def felt_ms(self) -> float | None:
        """Last voiced sample of the user's speech -> first answer sample out of the player."""
        return None if self.playback is None else self.voice_gap_ms + self.playback.start_ms

    @property
    def rtf(self) -> float | None:
        """Turn time over answer audio time: below 1 the answer is made faster than it plays."""
        return self.total_ms / 1000 / self.answer_audio_s if self.answer_audio_s > 0 else None

    def rates(self) -> dict[str, float | None]:
        """Per-unit costs, comparable across packages and answers of different length."""
        s = self.stages_ms

        def per(ms: float, n: float) -> float | None:
            return ms / n if n > 0 else None

        def tok_s(n: int, ms: float) -> float | None:
            return n / (ms / 1000) if ms > 0 and n > 0 else None

        return {"prefill_tok_s": tok_s(self.prefill_tokens, s["llm_prefill"]),
                "decode_tok_s": tok_s(self.decode_tokens, s["llm_decode"]),
                "audio_head_ms_per_frame": per(s["audio_head"], self.audio_frames),
                "flow_ms_per_segment": per(s["flow"], self.segments),
                "vocoder_ms_per_segment": per(s["vocoder"], self.segments),
                "encoder_ms_per_audio_s": per(s["encoder"], self.encoded_seconds or self.input_seconds)}


def stage_sums(spans: Sequence[Span], start: float, end: float) -> dict[str, float]:
    """ms per stage of the spans clipped to [start, end], with the rest of the window as ``other``."""
    sums = dict.fromkeys(STAGES, 0.0)
    for span in spans:
        lo, hi = max(span.start, start), min(span.end, end)
        if hi > lo:
            sums[span.stage] += (hi - lo) * 1000
    sums["other"] = max(0.0, (end - start) * 1000 - sum(sums.values()))
    return sums


def merge_spans(spans: Sequence[Span], gap_s: float = 5e-4) -> list[Span]:
    """Adjacent runs of one stage as one span (a frame's per-codebook head runs, the flow's solver steps)."""
    merged: list[Span] = []
    for span in spans:
        if merged and merged[-1].stage == span.stage and span.start - merged[-1].end <= gap_s:
            merged[-1].end = span.end
        else:
            merged.append(Span(span.stage, span.start, span.end))
    return merged


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a container or ``taskset`` limit), not the box's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def cores_busy(cpu_s: float, wall_s: float, cores: int | None = None) -> float | None:
    """CPU seconds of the process's threads over wall seconds x ``cores`` (default: ``usable_cores()``)."""
    return cpu_s / (wall_s * (cores or usable_cores())) if wall_s > 0 else None


def peak_rss_mb() -> float:
    """The process's peak resident set (VmHWM), without psutil."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def gpu_memory_mb(pid: int | None = None) -> float | None:
    """GPU memory this process holds per nvidia-smi (the CUDA arena keeps its peak), or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    pid = os.getpid() if pid is None else pid
    used = 0.0
    for line in out.stdout.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 2 and fields[0] == str(pid) and fields[1].replace(".", "").isdigit():
            used += float(fields[1])
    return used


def device_info(providers_in_use: Sequence[str]) -> dict[str, Any]:
    """What the numbers depend on: CPU model, cores, ISA, GPU, onnxruntime build and providers."""
    detected = detect_device()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    features = detected.isa
    if not features:  # ARM names them "Features"
        try:
            features = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                             if line.startswith("Features")), [])
        except OSError:
            features = []
    gpu_total = None
    if detected.gpu and shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        first = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
        gpu_total = float(first) if first.replace(".", "").isdigit() else None
    return {"cpu_model": model or platform.processor() or platform.machine(), "machine": platform.machine(),
            "cores": detected.cores, "isa": sorted(f for f in features if ISA_OF_INTEREST.match(f)),
            "gpu": detected.gpu_name or None, "gpu_memory_mb": gpu_total, "os": platform.platform(),
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "available_providers": list(ort.get_available_providers()), "providers": list(providers_in_use)}


def speech_input(path: str | Path | None, rate: int, workdir: Path) -> tuple[np.ndarray, str]:
    """The user's side of the turn: a file, or a sentence spoken by espeak-ng now (no recording needed)."""
    from bcaudio.runtime.audio.files import load_audio

    if path is not None:
        return load_audio(path, rate), str(path)
    if shutil.which("espeak-ng") is None:
        raise UserError("espeak-ng is not installed, and no --input was given: install it "
                        "(`apt-get install espeak-ng`) or pass --input speech.wav")
    wav = workdir / "espeak-input.wav"
    done = subprocess.run(["espeak-ng", "-w", str(wav), DEFAULT_SENTENCE], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"espeak-ng failed ({done.stderr.strip()[:200]}); pass --input speech.wav instead")
    return load_audio(wav, rate), f"espeak-ng: {DEFAULT_SENTENCE!r}"


def with_segment_frames(gen: GenerationConfig, frames: int) -> GenerationConfig:
    """``gen`` with every audio segment exactly ``frames`` long (``--segment-frames``; 0: ``gen`` unchanged)."""
    if not frames:
        return gen
    return dataclasses.replace(gen, audio=dataclasses.replace(gen.audio, min_new_tokens=frames,
                                                              max_new_tokens=frames))


class Profiler:
    """Runs voice turns on one package under one device profile and measures each."""

    def __init__(self, package: str | Path, profile: DeviceProfile, seed: int = 0,
                 log: Callable[[str], None] = print, live_prefill: bool = False, segment_frames: int = 0) -> None:
        """``live_prefill``: feed the user's audio as ``bcaudio chat`` does, chunk by chunk while it is spoken
        (``SpokenInput``), and time the turn from end of speech; otherwise the whole utterance is tokenized
        and prefilled inside the timed turn. ``segment_frames`` (0: the model decides) makes every audio
        segment exactly that many frames: random weights run every segment to the frame cap (40 in
        ``small``, 500 published) where a trained model ends each clause."""
        self.profile, self.seed, self.log, self.live_prefill = profile, seed, log, live_prefill
        self.assistant = VoiceAssistant(package, None, settings=profile.session, seed=seed,
                                        flow_steps=profile.generation.flow_steps,
                                        stream=profile.generation.stream(), log=log)
        self.assistant.loop.gen = with_segment_frames(self.assistant.loop.gen, segment_frames)
        self.recorder = TurnRecorder(self.assistant.cfg.tokens.assistant)
        self.assistant.sessions.run_observers.append(self.recorder.observe)
        try:  # the live session's endpointing decides where the user's turn ends, so felt latency is its
            self.vad = SileroVad()
            ep = profile.endpoint
            self.detector = SmartTurn(threshold=ep.turn_threshold) if ep.turn_detector else None
        except (VadModelError, TurnModelError) as exc:
            raise UserError(str(exc)) from None
        self.new_conversation()

    def new_conversation(self) -> None:
        """A fresh KV cache on the already-open sessions (opening them again would cost seconds)."""
        a = self.assistant
        a.loop.close()  # its decode worker: the new loop makes its own
        a.backend = ProfilingBackend(a.sessions, self.recorder, seed=self.seed,
                                     flow_steps=self.profile.generation.flow_steps)
        a.loop = SpeechLoop(a.cfg, a.backend, a.codec, seed=self.seed, generation=a.loop.gen)

    @property
    def on_cuda(self) -> bool:
        return self.assistant.sessions.providers[0] == "CUDAExecutionProvider"

    def recipe_mismatches(self) -> list[str]:
        """Graphs whose precision in the package differs from the profile's recipe: the timings are the package's."""
        graphs = self.assistant.sessions.manifest.graphs
        return [f"{g}: package {graphs[g].precision}, profile {want}" for g, want in self.profile.recipe.items()
                if g in graphs and graphs[g].precision != want]

    def hear(self, audio16k: np.ndarray) -> Heard:
        """The utterance the live session would cut from ``audio16k`` (followed by silence), and where."""
        a = self.assistant
        return hear(a.prepare(audio16k, a.cfg.frontend.sampling_rate), self.vad, self.profile.endpoint, self.detector)

    def turn(self, audio16k: np.ndarray, index: int, progress: Callable[[str], None] | None = None,
             heard: Heard | None = None) -> TurnMeasure:
        """One voice turn from the end-of-turn decision to the turn's end event.

        ``audio16k`` is followed by silence and cut where the live endpointer (and turn detector) would end
        the utterance; that cut is what the model hears (``heard``: already cut by ``hear``)."""
        a, rec = self.assistant, self.recorder
        rate = a.cfg.frontend.sampling_rate
        heard = heard or self.hear(audio16k)
        context = a.backend.position
        rec.reset()
        first_text = first_audio = None
        samples, pieces, text_tokens, stop = 0, 0, 0, ""
        spoken, to_first, speaking = None, (None, None), []
        arrivals: list[float] = []
        sizes: list[int] = []
        if self.live_prefill:
            gen = self.profile.generation
            spoken = SpokenInput(a, heard.audio, gen.prefill_chunk_ms, gen.tokenize_left_context_ms)
            spoken.while_speaking()
            speaking = list(rec.spans)
            rec.reset()  # what was fed while the user spoke is not part of the timed turn
            start, cpu = time.perf_counter(), time.process_time()
            spoken.end_of_speech()
            events = a.loop.guarded_answer()
        else:
            start, cpu = time.perf_counter(), time.process_time()
            events = a.respond(heard.audio, rate)
        for event in events:
            now = time.perf_counter()
            if isinstance(event, TextDelta):
                first_text = first_text or now
                text_tokens += len(event.ids)
            elif isinstance(event, AudioSegment):
                if first_audio is None:  # N text tokens were sampled: N - 1 fed, then <audiogen_start>
                    first_audio, to_first = now, (rec.decode_tokens - rec.frames, rec.frames)
                samples, pieces = samples + event.waveform.size, pieces + 1
                arrivals.append((now - start) * 1000)
                sizes.append(event.waveform.size)
            elif isinstance(event, TurnEnd):
                stop = event.reason
            if progress is not None:
                progress(f"{text_tokens} text tokens, {rec.frames} audio frames, {rec.segments} segment(s), "
                         f"{now - start:.1f} s")
        end, cpu = time.perf_counter(), time.process_time() - cpu
        # a turn that ends without feeding an answer token (EOS first) shows its first text with the first event
        first_token = rec.first_token_at or first_text

        def ms(t: float | None) -> float | None:
            return (t - start) * 1000 if t is not None else None

        counts = dict.fromkeys(STAGES[:-1], 0)
        for span in rec.spans:
            counts[span.stage] += 1
        crossfade = a.cfg.generation.crossfade_samples * max(0, pieces - 1)
        backlog, speaking_spans = self._while_speaking(spoken, heard, speaking)
        fade = a.cfg.generation.crossfade_samples
        durations = [max(0, n - (fade if i + 1 < len(sizes) else 0)) / a.sample_rate for i, n in enumerate(sizes)]
        return TurnMeasure(
            index=index, context_tokens=context, input_seconds=heard.audio.size / rate, total_ms=(end - start) * 1000,
            ttft_ms=ms(first_token), first_text_event_ms=ms(first_text), first_audio_ms=ms(first_audio),
            answer_audio_s=max(0, samples - crossfade) / a.sample_rate, text_tokens=text_tokens,
            prefill_tokens=rec.prefill_tokens, decode_tokens=rec.decode_tokens, audio_frames=rec.frames,
            segments=rec.segments, stop=stop, peak_rss_mb=peak_rss_mb(),
            gpu_mem_mb=gpu_memory_mb() if self.on_cuda else None, stages_ms=stage_sums(rec.spans, start, end),
            stages_to_first_audio_ms=stage_sums(rec.spans, start, first_audio) if first_audio else {},
            counts=counts, spans=list(rec.spans), start=start,
            encoded_seconds=spoken.last_window_seconds if spoken else None,
            fed_while_speaking=spoken.fed if spoken else 0, text_tokens_to_first_audio=to_first[0],
            frames_to_first_audio=to_first[1], heard=heard, backlog_ms=backlog * 1000,
            speaking_spans=speaking_spans, playback=playback([t + backlog * 1000 for t in arrivals], durations),
            cpu_s=cpu, cores=usable_cores())

    def _while_speaking(self, spoken: SpokenInput | None, heard: Heard, spans: list[Span]
                        ) -> tuple[float, list[Span]]:
        """The chunks fed while the user spoke, placed where a worker fed in real time runs them (seconds from
        the decision), and the backlog: how long after the decision the last of them was still running."""
        if spoken is None or not spoken.chunk_times:
            return 0.0, []
        ep = self.profile.endpoint
        pre_roll = pre_roll_frames(ep) * FRAME / self.assistant.cfg.frontend.sampling_rate
        chunk = spoken.chunk_samples / self.assistant.cfg.frontend.sampling_rate
        available = [heard.start_s + max((k + 1) * chunk, pre_roll) for k in range(len(spoken.chunk_times))]
        starts = worker_schedule(available, [t1 - t0 for t0, t1 in spoken.chunk_times])
        placed = []
        for span in spans:
            k = next((k for k, (_, t1) in enumerate(spoken.chunk_times) if span.start <= t1), len(starts) - 1)
            shift = starts[k] - spoken.chunk_times[k][0]
            placed.append(Span(span.stage, span.start + shift, span.end + shift))
        t0, t1 = spoken.chunk_times[-1]
        return max(0.0, starts[-1] + t1 - t0), placed

    def run(self, audio16k: np.ndarray, turns: int, warmup: int = 1,
            progress: Progress | None = None) -> list[TurnMeasure]:
        """``warmup`` unmeasured turns (first-run allocations), then ``turns`` measured turns of one conversation.

        The conversation restarts when the next turn could outgrow the profile's context length.
        """
        show: Progress = progress or (lambda _m, _d: None)
        for i in range(warmup):
            show(f"warm-up turn {i + 1}/{warmup}", False)
            self.turn(audio16k, -1)
        if warmup:
            self.new_conversation()
        measures: list[TurnMeasure] = []
        growth = 0
        limit = self.profile.generation.context_tokens
        for i in range(turns):
            if measures and self.assistant.backend.position + growth > limit:
                self.log(f"context would pass {limit} tokens: turn {i + 1} starts a new conversation")
                self.new_conversation()
            before = self.assistant.backend.position
            m = self.turn(audio16k, i, (lambda s, i=i: show(f"turn {i + 1}/{turns}: {s}", False)) if progress else None)
            self.assistant.loop.settle_history()  # as bcaudio chat does while the answer plays: outside the turn
            growth = self.assistant.backend.position - before
            measures.append(m)
            fa = f"{m.first_audio_ms:.0f} ms" if m.first_audio_ms is not None else "none"
            felt = f"{m.felt_ms:.0f} ms" if m.felt_ms is not None else "none"
            rtf = f"{m.rtf:.2f}" if m.rtf is not None else "n/a"
            busy = f", cores {m.cores_busy:.0%} busy" if m.cores_busy is not None else ""
            show(f"turn {i + 1}/{turns}: {m.total_ms / 1000:.2f} s, felt latency {felt} (end of turn by "
                 f"{m.heard.ended_by} {m.voice_gap_ms:.0f} ms after the voice), first audio {fa}, RTF {rtf}{busy}, "
                 f"{m.answer_audio_s:.2f} s of answer audio", True)
        return measures
