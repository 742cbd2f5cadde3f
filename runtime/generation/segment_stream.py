"""One answer segment decoded in windows while its frames are generated, so its audio starts early.

The reference decodes a segment only after its last frame (spec §12), so the first audio waits for
the first segment's 40-odd frames (0.8 s of int4 llm + head on a 2-core CPU) and then for their
decode. Here, after ``first_chunk_frames`` codes and then every ``chunk_frames`` new codes (or a
growing number of them: ``StreamSettings.window_frames``), a window of those codes and
``left_context_frames`` codes before them is decoded (flow + vocoder),
and the window's new audio is played, less its last ``holdback_samples``: the vocoder's
convolutions look ahead, so the end of a window waits for the next one, which starts
``crossfade`` samples earlier and is joined with the same crossfade as segments are. The cost is
bounded: each code is decoded at most ``1 + left / chunk`` times, never the growing prefix.
The vocoder's sine source is one signal over the segment: each window takes up its cumulative
phase where the window's piece starts, from the window before (``source_phase``).

Not exact. The detokenizer's GroupNorm normalises over the whole window (see
``export/detokenizer.py``), causal attention in the detokenizer and pre-net sees only the window,
and the estimator's attention blocks start at the window's start; so a streamed segment differs
from the whole-segment decode: ``tools/stream_fidelity_table.py`` measures by how much (README,
"Streaming inside a segment")."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bcaudio.config import ModelConfig, StreamSettings
from bcaudio.runtime.generation.source_phase import SourcePhase

# (codes, index of codes[0] in the segment, the segment's source phase) -> waveform
Decode = Callable[[np.ndarray, int, SourcePhase], np.ndarray]


class SegmentStream:
    """Feed the segment's codes after each frame (``add``) and at its end (``finish``); both return
    the audio to play next (``add`` only when a window is due). Consecutive pieces overlap by
    ``crossfade`` samples, so ``crossfade_join`` of the pieces is the streamed segment."""

    def __init__(self, decode: Decode, settings: StreamSettings, crossfade: int, cfg: ModelConfig) -> None:
        self.decode, self.settings, self.crossfade = decode, settings, crossfade
        self.frame_samples = cfg.vocoder.samples_per_frame
        self.code_samples = cfg.bridge.avg_pooler * self.frame_samples
        self.phase = SourcePhase(cfg.vocoder.nb_harmonics + 1)
        self.done = 0  # codes whose window has been decoded
        self.windows = 0  # windows decoded so far (their sizes follow ``settings.window_frames``)
        self.played_to = 0  # segment sample where the last piece ended (its crossfade tail included)
        self.last: tuple[int, np.ndarray] | None = None  # (first sample, waveform) of the last window

    def add(self, codes: np.ndarray) -> np.ndarray | None:
        chunk = self.settings.window_frames(self.windows)
        if chunk == 0 or len(codes) - self.done < chunk:
            return None
        return self._window(codes, final=False)

    def finish(self, codes: np.ndarray) -> np.ndarray:
        if len(codes) == 0:
            return np.zeros(0, np.float32)
        if self.done == 0:
            return self.decode(codes, 0, self.phase)  # never streamed: the reference's whole-segment decode
        if len(codes) == self.done and self.last is not None:  # the last window already saw the last code
            base, wave = self.last
            return wave[self._start() - base:]
        return self._window(codes, final=True)

    def _start(self) -> int:
        return max(0, self.played_to - self.crossfade)

    def _window(self, codes: np.ndarray, final: bool) -> np.ndarray:
        start = self._start()
        first = max(0, min(self.done - self.settings.left_context_frames, start // self.code_samples))
        self.phase.take_up_at(start // self.frame_samples)
        wave = self.decode(codes[first:], first, self.phase)
        base = first * self.code_samples
        end = base + wave.size if final else max(start, base + wave.size - self.settings.holdback_samples)
        self.done, self.played_to, self.last = len(codes), end, (base, wave)
        self.windows += 1
        return wave[start - base:end - base]
