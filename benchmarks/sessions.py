"""Sessions per box: N conversations answering at once, their decode steps batched (or not), on one package.

Every conversation answers the same spoken question (tokenized once; seeds differ, so answers
differ) on its own thread, all started together; the clock of each starts when its prompt is
fed. Figures per run: aggregate audio frames per second (all answers' frames over the wall time
of the slowest), per conversation the time to first audio and the real-time factor (turn time
over the answer's duration: < 1 is real time), and how many conversations the scheduler's
llm batches held. ``batched=False`` is the baseline: each conversation on its own ``OrtBackend``
over the same sessions, every step run separately.
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcaudio.runtime.generation.batching import BatchScheduler
from bcaudio.runtime.generation.speech_loop import AudioSegment, SpeechLoop, TurnEnd
from bcaudio.runtime.package.ort_backend import OrtBackend
from bcaudio.runtime.package.profiles import DeviceProfile
from bcaudio.runtime.package.sessions import PackageSessions
from bcaudio.runtime.package.text_codec import TextCodec
from bcaudio.runtime.profiling.profiler import cores_busy


@dataclass
class ConversationTurn:
    first_audio_ms: float | None = None
    total_ms: float = 0.0
    frames: int = 0
    answer_audio_s: float = 0.0
    reason: str = ""

    @property
    def rtf(self) -> float | None:
        return self.total_ms / 1000 / self.answer_audio_s if self.answer_audio_s else None


@dataclass
class SessionsRun:
    sessions: int
    batched: bool
    wall_s: float
    turns: list[ConversationTurn] = field(default_factory=list)
    llm_batches: dict[int, int] = field(default_factory=dict)
    cpu_s: float = 0.0  # CPU time of the process's threads over the run

    def figures(self) -> dict[str, Any]:
        frames = sum(t.frames for t in self.turns)
        firsts = [t.first_audio_ms for t in self.turns if t.first_audio_ms is not None]
        rtfs = [t.rtf for t in self.turns if t.rtf is not None]
        steps = sum(self.llm_batches.values())
        return {"sessions": self.sessions, "batched": self.batched, "wall_s": self.wall_s, "frames": frames,
                "aggregate_frames_per_s": frames / self.wall_s,
                "cores_busy": cores_busy(self.cpu_s, self.wall_s),  # near 1: more sessions cannot add frames
                "first_audio_ms_median": statistics.median(firsts) if firsts else None,
                "first_audio_ms_max": max(firsts) if firsts else None,
                "rtf_max": max(rtfs) if rtfs else None, "all_real_time": bool(rtfs) and max(rtfs) < 1.0,
                "mean_llm_batch": (sum(k * v for k, v in self.llm_batches.items()) / steps) if steps else None,
                "turns": [{**t.__dict__, "rtf": t.rtf} for t in self.turns]}


def _converse(loop: SpeechLoop, codes: np.ndarray, rate: int, start: threading.Barrier, out: ConversationTurn
              ) -> None:
    start.wait()
    t0 = time.perf_counter()
    for event in loop.respond(codes):
        if isinstance(event, AudioSegment):
            if out.first_audio_ms is None:
                out.first_audio_ms = (time.perf_counter() - t0) * 1000
            out.frames += len(event.codes)
            out.answer_audio_s += len(event.waveform) / rate
        elif isinstance(event, TurnEnd):
            out.reason = event.reason
    out.total_ms = (time.perf_counter() - t0) * 1000


def _together(jobs: Sequence[Callable[[threading.Barrier], None]]) -> tuple[float, float]:
    """Run each job on its own thread; each waits on the barrier it is given, so the clock starts when all are
    ready; -> (seconds until the last one ends, the process's CPU seconds meanwhile)."""
    go = threading.Barrier(len(jobs) + 1)
    threads = [threading.Thread(target=job, args=(go,)) for job in jobs]
    for t in threads:
        t.start()
    go.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    return time.perf_counter() - start, time.process_time() - cpu


def run_sessions(sessions: PackageSessions, codec: TextCodec, profile: DeviceProfile, codes: np.ndarray, count: int,
                 batched: bool) -> SessionsRun:
    """``count`` conversations answering ``codes`` at once on ``sessions`` (opened with ``profile.session``)."""
    cfg, gen = sessions.cfg, profile.generation
    generation = dataclasses.replace(cfg.generation, stream=gen.stream())
    scheduler = BatchScheduler(sessions) if batched else None
    backends = [scheduler.backend(i, gen.flow_steps) if scheduler else OrtBackend(sessions, i, gen.flow_steps)
                for i in range(count)]
    loops = [SpeechLoop(cfg, b, codec, seed=i, generation=generation) for i, b in enumerate(backends)]
    turns = [ConversationTurn() for _ in range(count)]
    wall, cpu = _together([lambda go, loop=loop, turn=turn: _converse(loop, codes, cfg.vocoder.sampling_rate, go, turn)
                      for loop, turn in zip(loops, turns, strict=True)])
    batches: dict[int, int] = {}
    if scheduler is not None:
        batches = dict(scheduler.stats.llm_batches)
        scheduler.close()
    return SessionsRun(count, batched, wall, turns, batches, cpu)


def decode_loop_rate(sessions: PackageSessions, count: int, frames: int, batched: bool, context: int = 128) -> float:
    """Audio frames per second of ``count`` conversations doing only the decode loop (one llm step + one head frame
    per frame, greedy, no flow or vocoder): what batching changes, apart from the per-conversation audio decode."""
    cfg = sessions.cfg
    scheduler = BatchScheduler(sessions) if batched else None
    backends = [scheduler.backend(i) if scheduler else OrtBackend(sessions, i) for i in range(count)]
    pad, k = cfg.tokens.audio_pad, cfg.bridge.num_codebooks

    def frames_of(backend: object, seed: int, go: threading.Barrier) -> None:
        ids = np.random.default_rng(seed).integers(0, 1000, context).tolist()
        _, hidden = backend.feed(ids, logits=False)
        go.wait()
        for _ in range(frames):
            codes = backend.audio_frame(hidden, lambda _i, logits: int(np.argmax(logits[:-1])))
            _, hidden = backend.feed([pad], np.asarray(codes, np.int64).reshape(1, k), logits=False)

    wall, _ = _together([lambda go, b=b, i=i: frames_of(b, i, go) for i, b in enumerate(backends)])
    if scheduler is not None:
        scheduler.close()
    return count * frames / wall


def sessions_table(package: Path, profile: DeviceProfile, speech: Path | None, counts: Sequence[int],
                   workdir: Path, progress: Callable[[str], None], loop_frames: int = 40) -> dict[str, Any]:
    """Per count in ``counts``: the batched run and the separate-steps baseline, alternated, on one set of
    sessions (a warm-up conversation first); -> the table's document (``sessions`` in the results JSON)."""
    from bcaudio.runtime.profiling.profiler import speech_input

    sessions = PackageSessions(package, profile.session, log=lambda _: None)
    codec = TextCodec(package / "tokenizer.json")
    audio, source = speech_input(speech, sessions.cfg.frontend.sampling_rate, workdir)
    (codes,) = sessions.run("audio_tokenizer", {"waveform": audio[None].astype(np.float32)})
    run_sessions(sessions, codec, profile, codes[0], 1, batched=False)  # warm-up: first-run allocations
    runs = []
    for count in counts:
        for batched in (True, False):
            run = run_sessions(sessions, codec, profile, codes[0], count, batched).figures()
            run["decode_loop_frames_per_s"] = decode_loop_rate(sessions, count, loop_frames, batched)
            progress(f"  {count} session(s) {'batched' if batched else 'separate'}: "
                     f"{run['aggregate_frames_per_s']:.1f} frames/s (decode loop alone "
                     f"{run['decode_loop_frames_per_s']:.1f}), first audio median "
                     f"{run['first_audio_ms_median']:.0f} ms, worst RTF {run['rtf_max']:.2f}, "
                     f"cores {run['cores_busy']:.0%} busy")
            runs.append(run)
    # against one conversation on the plain path (OrtBackend), what the runtime does without batching
    alone = next((r["aggregate_frames_per_s"] for r in runs if r["sessions"] == 1 and not r["batched"]), None)
    loop_alone = next((r["decode_loop_frames_per_s"] for r in runs if r["sessions"] == 1 and not r["batched"]), None)
    for r in runs:
        r["x_one_session"] = r["aggregate_frames_per_s"] / alone if alone else None
        r["decode_loop_x_one_session"] = r["decode_loop_frames_per_s"] / loop_alone if loop_alone else None
    return {"package": str(package), "device_profile": profile.name, "speech": source, "runs": runs}
