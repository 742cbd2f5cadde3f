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
The first window may be solved with fewer flow steps (``StreamSettings.first_flow_steps``): it alone
stands between the text and the first sound.

Not exact. The detokenizer's GroupNorm normalises over the whole window (see
``export/detokenizer.py``), causal attention in the detokenizer and pre-net sees only the window,
and the estimator's attention blocks start at the window's start; so a streamed segment differs
from the whole-segment decode: ``tools/stream_fidelity_table.py`` measures by how much (README,
"Streaming inside a segment")."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future

import numpy as np

from bcaudio.config import ModelConfig, StreamSettings
from bcaudio.runtime.generation.source_phase import SourcePhase

# (codes, index of codes[0] in the segment, the segment's source phase, flow steps or None for the backend's)
# -> waveform
Decode = Callable[[np.ndarray, int, SourcePhase, int | None], np.ndarray]
# (codes of the segment that the piece's audio ends at, the audio to play)
Piece = tuple[int, np.ndarray]


class SegmentStream:
    """Feed the segment's codes after each frame (``add``) and at its end (``finish``); both return
    the pieces of audio to play next, in order (``add`` only once a window's decode is done).
    Consecutive pieces overlap by ``crossfade`` samples, so ``crossfade_join`` of the pieces is the
    streamed segment.

    With a ``worker`` a window is decoded on it while the caller makes the next window's frames (on a
    2-core CPU an llm step and its head steps keep about one core busy, so the decode can use the
    other): one decode in flight, since a window starts where the one before it ended and takes up
    its source phase. The segment's first window is still decoded at once when the speaker may be waiting
    for it (``first_at_once``: the turn's first segment), since the frames made beside it would only slow
    it down. ``finish(defer=True)`` puts the last window on the worker too and hands its piece out from
    ``drain``, so the loop's next text step runs beside it. Without a worker every window is decoded at
    once. The windows, their inputs and so their audio are the same either way; only when a piece comes
    out differs."""

    def __init__(self, decode: Decode, settings: StreamSettings, crossfade: int, cfg: ModelConfig,
                 worker: Executor | None = None, first_at_once: bool = True) -> None:
        self.decode, self.settings, self.crossfade, self.worker = decode, settings, crossfade, worker
        self.first_at_once = first_at_once
        self.rest: int | None = None  # deferred: the segment's codes, its last piece cut from the window in flight
        self.frame_samples = cfg.vocoder.samples_per_frame
        self.code_samples = cfg.bridge.avg_pooler * self.frame_samples
        self.phase = SourcePhase(cfg.vocoder.nb_harmonics + 1)
        self.done = 0  # codes whose window has been decoded or is being decoded
        self.windows = 0  # windows started so far (their sizes follow ``settings.window_frames``)
        self.played_to = 0  # segment sample where the last piece ended (its crossfade tail included)
        self.last: tuple[int, np.ndarray] | None = None  # (first sample, waveform) of the last window
        # the window being decoded: (its decode, codes it ends at, first sample it plays, its first sample, final)
        self.pending: tuple[Future, int, int, int, bool] | None = None

    def add(self, codes: np.ndarray) -> list[Piece]:
        out = self._collect(wait=False)
        chunk = self.settings.window_frames(self.windows)
        if chunk == 0 or len(codes) - self.done < chunk:
            return out
        out += self._collect(wait=True)  # the window before must have ended: this one starts there
        self._start_window(codes)
        return out + self._collect(wait=self.worker is None)  # a window decoded at once is ready now

    def finish(self, codes: np.ndarray, defer: bool = False) -> list[Piece]:
        """The pieces still to come, the segment's last piece last; with ``defer`` (and a worker) the pieces
        ready now, the last one still being decoded (``pending``) for ``drain`` to hand out."""
        defer = defer and self.worker is not None
        if defer and self.pending is not None and self.pending[1] == len(codes):
            self.rest = len(codes)  # the window in flight saw the last code: its remainder follows it in drain
            return []
        out = self._collect(wait=True)
        if len(codes) == 0:
            return out + [(0, np.zeros(0, np.float32))]
        if self.done == 0:  # never streamed: the reference's whole-segment decode, as one final window
            if not defer:
                return out + [(len(codes), self.decode(codes, 0, self.phase, None))]
            self.done, self.pending = len(codes), (self.worker.submit(self.decode, codes, 0, self.phase, None),
                                                   len(codes), 0, 0, True)
            return out
        if len(codes) == self.done and self.last is not None:  # the last window already saw the last code
            base, wave = self.last
            return out + [(len(codes), wave[self._start() - base:])]
        self._start_window(codes, final=True, aside=defer)
        return out + self._collect(wait=not defer)

    def ready(self) -> bool:
        """Whether ``drain`` would return without waiting."""
        return self.pending is None or self.pending[0].done()

    def drain(self) -> list[Piece]:
        """The deferred pieces (``finish(defer=True)``), the segment's last one last, once decoded; [] if none
        is left."""
        out = self._collect(wait=True)
        if self.rest is not None and self.last is not None:
            base, wave = self.last
            out.append((self.rest, wave[self._start() - base:]))
        self.rest = None
        return out

    def stop(self) -> Future | None:
        """Drop the window in flight (the turn was cut off): a decode not started yet never starts. -> that
        decode, for the caller to stop and wait for when it had started (the worker outlives the segment)."""
        if self.pending is None:
            return None
        decoded, self.pending = self.pending[0], None
        decoded.cancel()
        return decoded

    def _start(self) -> int:
        return max(0, self.played_to - self.crossfade)

    def _start_window(self, codes: np.ndarray, final: bool = False, aside: bool = False) -> None:
        """``aside``: a final window too is decoded on the worker (``finish(defer=True)``)."""
        start = self._start()
        first = max(0, min(self.done - self.settings.left_context_frames, start // self.code_samples))
        self.phase.take_up_at(start // self.frame_samples)
        window = np.array(codes[first:])  # the caller goes on writing its frames while this is decoded
        steps = (self.settings.first_flow_steps or None) if self.windows == 0 else None
        if self.worker is None or (final and not aside) or (self.windows == 0 and self.first_at_once):
            decoded: Future = Future()
            decoded.set_result(self.decode(window, first, self.phase, steps))
        else:
            decoded = self.worker.submit(self.decode, window, first, self.phase, steps)
        self.done, self.pending = len(codes), (decoded, len(codes), start, first * self.code_samples, final)
        self.windows += 1

    def _collect(self, wait: bool) -> list[Piece]:
        if self.pending is None or not (wait or self.pending[0].done()):
            return []
        decoded, codes, start, base, final = self.pending
        self.pending = None
        wave = decoded.result()
        end = base + wave.size if final else max(start, base + wave.size - self.settings.holdback_samples)
        self.played_to, self.last = end, (base, wave)
        return [(codes, wave[start - base:end - base])]
