"""The vocoder source's cumulative phase across the windows of one streamed segment.

The published vocoder sums its sine source's phase over the whole segment (spec §11), so a
segment decoded in windows (``segment_stream``) must hand the phase from one window to the next,
or every window would restart its harmonics at phase 0 and the joins would jump. The vocoder
graph takes the phase at the start of one of its frames (``start_phase``, ``start_frame``) and
returns it after each frame (``frame_phase``); this track keeps those values by segment frame.

Which frame: the one where the window's piece starts (the crossfade with the previous window),
not the window's first frame. The left context before it is decoded again from the window's
own mel, whose f0 differs a little from the previous window's there, and over 6 codes (11520
samples) a 1 Hz difference is half a cycle: carried at the first frame, that difference would
reach the join. Carried at the join, the two windows agree where they meet; given the same
f0 they both equal the whole segment's source (tests/test_vocoder.py).
"""

from __future__ import annotations

import numpy as np


class SourcePhase:
    """Cumulative phase (cycles in [0, 1), per harmonic) at the start of each segment frame decoded so far."""

    def __init__(self, harmonics: int) -> None:
        self.boundaries = np.zeros((harmonics, 1), np.float32)  # column f: the phase at the start of frame f
        self.anchor = 0  # the segment frame where the next window takes up the phase

    def take_up_at(self, frame: int) -> None:
        """The next window continues the phase from the start of segment frame ``frame`` (a frame already
        decoded, or the one right after)."""
        if not 0 <= frame < self.boundaries.shape[1]:
            raise ValueError(f"frame {frame} outside the {self.boundaries.shape[1] - 1} frames decoded so far")
        self.anchor = frame

    def feeds(self, first_frame: int) -> dict[str, np.ndarray]:
        """The vocoder's phase inputs for a window whose first frame is segment frame ``first_frame``."""
        if first_frame > self.anchor:
            raise ValueError(f"a window from frame {first_frame} cannot take up the phase at frame {self.anchor}")
        return {"start_phase": self.boundaries[None, :, self.anchor].copy(),
                "start_frame": np.array([self.anchor - first_frame], np.int64)}

    def record(self, first_frame: int, frame_phase: np.ndarray) -> None:
        """Keep the window's ``frame_phase`` (harmonics, frames) from the anchor on."""
        own = frame_phase[:, self.anchor - first_frame:]
        self.boundaries = np.concatenate([self.boundaries[:, :self.anchor + 1], own.astype(np.float32)], axis=1)
