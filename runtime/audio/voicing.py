"""The last voiced sample of an utterance, found on the audio itself: where a person's wait begins.

The endpointer decides "end of speech" a hangover after the voice stopped, so timing from its
decision hides that wait. This measure is independent of the VAD: 16 ms windows are voiced when
their energy is within ``PEAK_DROP_DB`` of the utterance's loudest window and ``FLOOR_RISE_DB``
above its quietest non-zero one (the room's noise floor: an utterance cut at end of speech always
ends in a pause; a quietest window near the peak is speech between digital zeros, not a floor);
inside the last voiced window the end is the last sample reaching the threshold's amplitude.
The live session runs it on the utterance when it ends, the profiler on
its input: one definition of where the voice stopped.
"""

from __future__ import annotations

import numpy as np

WINDOW = 256  # 16 ms at 16 kHz
PEAK_DROP_DB = 35.0  # a syllable's decay below this is inaudible next to the speech before it
FLOOR_RISE_DB = 12.0  # above the quietest window: noise fluctuations stay below
MIN_DB = -100.0  # digital silence
HEADROOM_DB = 6.0  # a "floor" this close to the peak is speech itself


def last_voiced_sample(audio: np.ndarray) -> int | None:
    """Index just past the last voiced sample of a recording (None when nothing in it is voiced)."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = x.size // WINDOW
    if n == 0:
        return None
    windows = x[:n * WINDOW].reshape(n, WINDOW).astype(np.float64)
    rms = np.sqrt(np.mean(windows**2, axis=1))
    db = np.where(rms > 0, 20 * np.log10(np.maximum(rms, 1e-12)), MIN_DB)
    quiet = db[rms > 0]
    floor = float(quiet.min()) if quiet.size else MIN_DB
    peak = float(db.max())
    threshold = peak - PEAK_DROP_DB
    if floor + FLOOR_RISE_DB < peak - HEADROOM_DB:  # else no window is room noise (speech between digital zeros)
        threshold = max(threshold, floor + FLOOR_RISE_DB)
    voiced = np.flatnonzero((db >= threshold) & (rms > 0))
    if voiced.size == 0:
        return None
    last = int(voiced[-1])
    loud = np.flatnonzero(np.abs(windows[last]) >= 10 ** (threshold / 20))
    return last * WINDOW + (int(loud[-1]) + 1 if loud.size else WINDOW)
