"""How a turn is generated: per-phase sampling, stop rules, prompts and streaming (spec §8, §12)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from bcaudio.config.base import check, from_plain


@dataclass
class SamplingParams:
    """One phase's sampling settings; temperature 0 means greedy.

    ``min_new_tokens`` (the audio phase only, as transformers' ``min_new_tokens`` bans EOS): frames before
    code 0 may end a segment. Random checkpoints almost never pick EOS, so their segments run to
    ``max_new_tokens`` (40 in ``small``, 500 published), where a trained model ends each clause; the profiler
    and bench set both (``--segment-frames``) so a turn has the same, chosen clause length on any checkpoint."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 50
    min_new_tokens: int = 0

    def validate(self, where: str) -> None:
        check(self.temperature >= 0, f"{where}: temperature must be >= 0")
        check(0 < self.top_p <= 1, f"{where}: top_p must be in (0, 1]")
        check(self.top_k >= 0 and self.repetition_penalty > 0, f"{where}: top_k >= 0 and repetition_penalty > 0")
        check(self.max_new_tokens >= 1, f"{where}: max_new_tokens must be >= 1")
        check(0 <= self.min_new_tokens <= self.max_new_tokens,
              f"{where}: min_new_tokens must be in 0 .. max_new_tokens ({self.max_new_tokens})")


def _greedy(rp: float, n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, repetition_penalty=rp, max_new_tokens=n)


@dataclass
class StreamSettings:
    """Decoding a segment in windows while its frames are still generated (``runtime/generation/segment_stream.py``).

    The reference decodes whole segments (spec §12), so the first audio waits for a segment's last
    frame; a window of ``chunk_frames`` new codes with ``left_context_frames`` codes before it is
    decoded as soon as its frames exist, and its last ``holdback_samples`` wait for the next window
    (the vocoder looks ahead). A window also starts no later than the code where its piece starts (the
    hold-back and crossfade before the last window's end), so a ``left_context_frames`` below that reach
    (3 codes at 200 ms) decodes the same windows. 0 ``chunk_frames`` decodes whole segments, as the
    reference does.
    ``first_chunk_frames`` (0: ``chunk_frames``) sizes a segment's first window on its own: small for
    an early first sound, while the later, larger windows decode fewer codes twice. A growing schedule
    (``growth`` > 1) makes each window after the second ``growth`` times the one before (rounded up, at
    most ``max_chunk_frames`` when that is > 0): a small window's fixed cost and left context are paid
    while little audio is queued, and each later window is computed while the growing queue plays.
    ``overlap_decode`` decodes a window on a thread of its own while the next window's frames are made
    (the llm and head steps keep about one of two CPU cores busy): the same audio, sooner.
    ``first_flow_steps`` (0: the backend's flow steps) solves a segment's first streamed window with fewer
    Euler steps: the speaker is waiting for that window alone, while the later windows are decoded as the
    queue plays. A segment decoded whole is not a first window and keeps the flow steps.
    """

    chunk_frames: int = 0
    first_chunk_frames: int = 0
    left_context_frames: int = 6  # 480 ms: hold-back, crossfade, 270 ms of HiFT's 385 ms look-back (README)
    holdback_samples: int = 4800  # 200 ms of HiFT's 385 ms look-ahead: a latency choice (README, streaming)
    growth: float = 1.0
    max_chunk_frames: int = 0
    overlap_decode: bool = False
    first_flow_steps: int = 0

    def window_frames(self, window: int) -> int:
        """New codes of a segment's window number ``window`` (0 first); 0 when segments are not streamed."""
        if self.chunk_frames == 0:
            return 0
        if window == 0:
            return self.first_chunk_frames or self.chunk_frames
        frames = self.chunk_frames
        for _ in range(window - 1):
            grown = math.ceil(frames * self.growth - 1e-9)
            frames = min(grown, self.max_chunk_frames) if self.max_chunk_frames else grown
            if frames == self.max_chunk_frames or self.growth == 1.0:
                break
        return frames

    def validate(self) -> None:
        check(min(self.chunk_frames, self.first_chunk_frames, self.holdback_samples, self.max_chunk_frames,
                  self.first_flow_steps) >= 0
               and self.left_context_frames >= 1, "generation.stream: chunk_frames, first_chunk_frames, "
               "max_chunk_frames, holdback_samples and first_flow_steps must be >= 0, left_context_frames >= 1")
        check(1.0 <= self.growth <= 4.0, f"generation.stream: growth must be in [1, 4], got {self.growth}")


HISTORY_MODES = ("published", "live")


@dataclass
class GenerationConfig:
    """The demo loop's per-phase defaults and stop rules (spec §8, §12).

    ``history`` is what the next turn sees of an answer. ``"published"``: the answer as the published demo
    rebuilds it into the next prompt (each text step with its last token, each segment as the audio
    tokenizer's codes of its decoded waveform; ``runtime/generation/published_history.py``), the form the
    model was shown. ``"live"``: the KV cache as generated (the step's last token replaced by
    ``<audiogen_start>``, the generated codes), which needs no re-encoding or re-prefill.
    ``system_prompt`` is the demo's default, which also selects the voice.
    """

    first_text: SamplingParams = field(default_factory=lambda: SamplingParams(0.8, 20, 0.85, 1.1, 50))
    text: SamplingParams = field(default_factory=lambda: SamplingParams(0.3, 20, 0.85, 1.05, 50))
    audio: SamplingParams = field(default_factory=lambda: SamplingParams(0.5, 5, 0.85, 1.3, 500))
    text_only: SamplingParams = field(default_factory=lambda: SamplingParams(0.8, 20, 0.85, 1.1, 1024))
    asr: SamplingParams = field(default_factory=lambda: _greedy(1.3, 448))
    max_rounds: int = 100
    clause_marks: list[str] = field(default_factory=lambda: [",", "!", "?", "，", "。", "！", "？", ". "])
    tts_min_piece_chars: int = 10
    asr_prompt: str = "将语音转录为文本:"
    system_prompt: str = "请用【邻家女声】这个声音回答问题。"
    crossfade_samples: int = 240
    stream: StreamSettings = field(default_factory=StreamSettings)
    history: str = "published"

    PHASES = ("first_text", "text", "audio", "text_only", "asr")

    def greedy(self) -> GenerationConfig:
        """A copy with temperature 0 in every phase (penalties and limits kept): for parity runs."""
        out = from_plain(GenerationConfig, dataclasses.asdict(self), "generation")
        for name in self.PHASES:
            getattr(out, name).temperature = 0.0
        return out

    def validate(self) -> None:
        for name in self.PHASES:
            getattr(self, name).validate(f"generation.{name}")
            check(name == "audio" or getattr(self, name).min_new_tokens == 0,
                  f"generation.{name}: min_new_tokens applies to the audio phase only; leave it 0")
        check(self.max_rounds >= 1, "generation: max_rounds must be >= 1")
        check(self.history in HISTORY_MODES,
              f"generation.history must be one of {', '.join(HISTORY_MODES)}, not {self.history!r}")
        self.stream.validate()
