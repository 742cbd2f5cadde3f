"""The stateful vocoder (export/vocoder_stream.py): chunk by chunk it is the whole-segment vocoder, in torch and
in its ONNX graph, for any chunking, batch and a voiced source whose phase crosses the chunks."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bcaudio.config import ModelConfig
from bcaudio.export.export_vocoder import (
    STREAM_INPUTS,
    export_vocoder_stream,
    first_stream_states,
    stream_state_names,
    vocoder_args,
    vocoder_example_inputs,
)
from bcaudio.export.vocoder import HiFTVocoder
from bcaudio.export.vocoder_stream import StreamingHiFT
from bcaudio.presets import get_preset

FRAMES = 47
# The stream's output agrees with the whole segment's to fp32 rounding (the sums run in another order); the
# waveform is ~0.1 at its peaks here.
TOLERANCE = 1e-6
# (cuts: the frames fed by the end of each call). A call of one frame, windows as the speech loop makes them,
# a last call with no new frame (the flush alone), the whole segment at once.
CHUNKINGS = [[20, 21, 30, FRAMES], [31, 39, FRAMES, FRAMES], [25] + list(range(26, FRAMES + 1)), [FRAMES]]


def _voiced(cfg: ModelConfig) -> HiFTVocoder:
    """Random weights with an F0 predictor around 150 Hz that follows the mel, so the sine source is on and its
    cumulative phase must cross every chunk (random weights alone say ~0 Hz: unvoiced)."""
    torch.manual_seed(0)
    module = HiFTVocoder(cfg.vocoder).eval()
    with torch.no_grad():
        module.f0_predictor.classifier.weight.mul_(0.1)
        module.f0_predictor.classifier.bias.fill_(150.0)
    return module


def _whole(module: HiFTVocoder, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return module(*vocoder_args(feeds))[0].numpy()


def _segment(cfg: ModelConfig, batch: int, seed: int) -> dict[str, np.ndarray]:
    feeds = vocoder_example_inputs(cfg, frames=FRAMES, seed=seed, batch=batch)
    feeds["start_phase"][:] = 0.0  # a segment's own start: phase 0 at frame 0
    feeds["start_frame"][:] = 0
    return feeds


def _chunks(feeds: dict[str, np.ndarray], cuts: list[int], samples: int):
    done = 0
    for i, cut in enumerate(cuts):
        yield {"mel": feeds["mel"][..., done:cut], "noise": feeds["noise"][..., done * samples:cut * samples],
               "harmonic_phase": feeds["harmonic_phase"], "first": np.array([int(i == 0)]),
               "final": np.array([int(i == len(cuts) - 1)])}
        done = cut


@pytest.fixture(scope="module")
def voiced() -> tuple[ModelConfig, HiFTVocoder]:
    cfg = get_preset("tiny")
    return cfg, _voiced(cfg)


@pytest.fixture(scope="module")
def stream_graph(voiced: tuple[ModelConfig, HiFTVocoder], tmp_path_factory: pytest.TempPathFactory
                 ) -> ort.InferenceSession:
    cfg, module = voiced
    path = tmp_path_factory.mktemp("stream") / "vocoder_stream.onnx"
    export_vocoder_stream(module, cfg, path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("cuts", CHUNKINGS)
def test_torch_stream_is_the_whole_segment(voiced: tuple[ModelConfig, HiFTVocoder], cuts: list[int]) -> None:
    cfg, module = voiced
    feeds = _segment(cfg, batch=2, seed=3)
    want = _whole(module, feeds)
    stream, states, pieces = StreamingHiFT(module).eval(), (), []
    with torch.no_grad():
        for chunk in _chunks(feeds, cuts, cfg.vocoder.samples_per_frame):
            wave, *states = stream(*(torch.from_numpy(chunk[k]) for k in STREAM_INPUTS), *states)
            pieces.append(wave.numpy())
    got = np.concatenate(pieces, -1)
    assert got.shape == want.shape == (2, FRAMES * cfg.vocoder.samples_per_frame)
    assert np.abs(want).max() > 0.01
    assert np.abs(got - want).max() <= TOLERANCE


@pytest.mark.parametrize(("cuts", "batch"), [(CHUNKINGS[0], 1), (CHUNKINGS[1], 2), (CHUNKINGS[2], 1)])
def test_onnx_stream_is_the_whole_segment(voiced: tuple[ModelConfig, HiFTVocoder],
                                          stream_graph: ort.InferenceSession, cuts: list[int], batch: int) -> None:
    """Every length in the graph stays dynamic (a traced constant would cut a later call wrongly), and the first
    states come from the graph's input shapes (``first_stream_states``)."""
    cfg, module = voiced
    feeds = _segment(cfg, batch=batch, seed=4)
    want = _whole(module, feeds)
    states, pieces = first_stream_states(stream_graph.get_inputs(), batch), []
    for chunk in _chunks(feeds, cuts, cfg.vocoder.samples_per_frame):
        wave, *out = stream_graph.run(None, {**chunk, **states})
        states = dict(zip(states, out, strict=True))
        pieces.append(wave)
    got = np.concatenate(pieces, -1)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE


def test_stream_graph_io_and_lag(voiced: tuple[ModelConfig, HiFTVocoder], stream_graph: ort.InferenceSession
                                 ) -> None:
    """A chunk's audio is what all its inputs have reached: the first call returns less than its frames' worth
    by the network's lookahead, and a later call of n frames exactly n frames' worth."""
    cfg, _ = voiced
    names = [i.name for i in stream_graph.get_inputs()]
    count = len(names) - len(STREAM_INPUTS)
    assert names == STREAM_INPUTS + stream_state_names(count)[0]
    assert [o.name for o in stream_graph.get_outputs()] == ["waveform", *stream_state_names(count)[1]]
    phase_states = [i for i in stream_graph.get_inputs()[len(STREAM_INPUTS):] if len(i.shape) == 2]
    assert len(phase_states) == 1 and phase_states[0].shape[1] == cfg.vocoder.nb_harmonics + 1
    samples = cfg.vocoder.samples_per_frame
    chunks = list(_chunks(_segment(cfg, 1, seed=5), [30, 34, FRAMES], samples))
    states = first_stream_states(stream_graph.get_inputs())
    lengths = []
    for chunk in chunks[:2]:
        wave, *out = stream_graph.run(None, {**chunk, **states})
        states = dict(zip(states, out, strict=True))
        lengths.append(wave.shape[-1])
    lag = StreamingHiFT(voiced[1]).lag_samples()
    assert 0 < lag < 30 * samples and lengths[0] == 30 * samples - lag
    assert lengths[1] == 4 * samples


def test_a_wrong_state_list_is_one_clear_error(voiced: tuple[ModelConfig, HiFTVocoder]) -> None:
    cfg, module = voiced
    chunk = next(_chunks(_segment(cfg, 1, seed=6), [FRAMES], cfg.vocoder.samples_per_frame))
    args = [torch.from_numpy(chunk[k]) for k in STREAM_INPUTS]
    stream = StreamingHiFT(module).eval()
    with torch.no_grad():
        _, *states = stream(*args)
        assert len(states) == stream.state_count() > 100
        for wrong in (states[:-1], [*states, states[0]]):
            with pytest.raises(ValueError, match=f"{len(wrong)} states given, this vocoder carries {len(states)}"):
                stream(*args, *wrong)
