"""The torch reference generation: deterministic for a seed, different across seeds, all four modes run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bcaudio.export.checkpoint import init_checkpoint, load_checkpoint
from bcaudio.export.reference_turn import reference_events
from bcaudio.presets import get_preset
from bcaudio.runtime.generation.speech_loop import collect
from bcaudio.runtime.package.text_codec import TextCodec


@pytest.fixture(scope="module")
def ref_and_codec(tmp_path_factory: pytest.TempPathFactory):
    ckpt = init_checkpoint(get_preset("tiny"), tmp_path_factory.mktemp("refgen") / "ckpt", seed=4)
    return load_checkpoint(ckpt), TextCodec(Path(ckpt) / "tokenizer.json")


def _turn(ref, codec, audio: np.ndarray, seed: int, mode: str = "respond"):
    return collect(reference_events(ref, codec, mode, audio, "Hello there, how are you today?", seed, False), 240)


def test_same_seed_same_turn_other_seed_other_turn(ref_and_codec, speech_16k: np.ndarray) -> None:
    ref, codec = ref_and_codec
    a, b, c = (_turn(ref, codec, speech_16k, s) for s in (11, 11, 12))
    assert a.text_ids == b.text_ids and a.reason == b.reason
    assert [s.codes.tolist() for s in a.segments] == [s.codes.tolist() for s in b.segments]
    assert np.array_equal(a.waveform(240), b.waveform(240))
    assert (a.text_ids, [s.codes.tolist() for s in a.segments]) != (c.text_ids, [s.codes.tolist() for s in c.segments])


@pytest.mark.parametrize("mode", ["text", "asr", "tts"])
def test_other_modes_run_and_stop(ref_and_codec, speech_16k: np.ndarray, mode: str) -> None:
    ref, codec = ref_and_codec
    result = _turn(ref, codec, speech_16k, 0, mode)
    assert result.reason in ("eos", "max_tokens", "done")
    if mode == "tts":
        assert result.segments and all(len(s.waveform) == 480 * (4 * len(s.codes) - 1) for s in result.segments
                                       if len(s.codes))
    else:
        assert not result.segments
