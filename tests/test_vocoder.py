"""HiFT vocoder: conv-based STFT pair vs torch, the reference module's behaviour and key names, ONNX parity, and the
NSF sine source (torch and ONNX) against a numpy transcription of the published algorithm, whole and streamed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bcaudio.config import ModelConfig, StreamSettings, VocoderConfig
from bcaudio.export.checkpoint import expected_shapes, init_checkpoint, load_checkpoint
from bcaudio.export.export_vocoder import (
    VOCODER_INPUTS,
    VOCODER_OUTPUTS,
    export_vocoder,
    vocoder_args,
    vocoder_example_inputs,
)
from bcaudio.export.random_init import random_tensor
from bcaudio.export.stft import ISTFT, STFT
from bcaudio.export.vocoder import HiFTVocoder
from bcaudio.metrics import snr_db
from bcaudio.presets import get_preset
from bcaudio.quant import fp16
from bcaudio.quant.fp16 import quantize_fp16
from bcaudio.runtime.audio.whisper_features import slaney_filter_bank
from bcaudio.runtime.generation.noise import NoiseSource
from bcaudio.runtime.generation.segment_stream import SegmentStream
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.speech_loop import crossfade_join
from bcaudio.runtime.generation.vocoder_noise import harmonic_phases, source_noise

VOICED_HZ = 200.0  # well above voiced_threshold, so the harmonic source is active
CROSSFADE = 240


@pytest.mark.parametrize(("n_fft", "hop", "length"), [(16, 4, 960), (64, 16, 1001)])
def test_stft_pair_matches_torch(n_fft: int, hop: int, length: int) -> None:
    gen = torch.Generator().manual_seed(n_fft)
    x = torch.randn(3, length, generator=gen)
    window = torch.hann_window(n_fft)
    bins = n_fft // 2 + 1
    want = torch.stft(x, n_fft, hop, n_fft, window=window, return_complex=True)
    got = STFT(n_fft, hop)(x)
    assert got.shape == (3, 2 * bins, length // hop + 1)
    torch.testing.assert_close(got[:, :bins], want.real, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[:, bins:], want.imag, atol=1e-5, rtol=0)

    spec = torch.randn(3, bins, 50, 2, generator=gen)
    want_wave = torch.istft(torch.view_as_complex(spec), n_fft, hop, n_fft, window=window)
    got_wave = ISTFT(n_fft, hop)(spec[..., 0], spec[..., 1])
    assert got_wave.shape == want_wave.shape == (3, 49 * hop)
    torch.testing.assert_close(got_wave, want_wave, atol=1e-5, rtol=0)


def _vocoder(cfg: ModelConfig, f0_hz: float) -> HiFTVocoder:
    """Random tiny vocoder whose F0 predictor says ``f0_hz`` everywhere (random weights give ~0 Hz: unvoiced)."""
    torch.manual_seed(0)
    module = HiFTVocoder(cfg.vocoder).eval()
    with torch.no_grad():
        module.f0_predictor.classifier.weight.zero_()
        module.f0_predictor.classifier.bias.fill_(f0_hz)
    return module


def _run(module: HiFTVocoder, feeds: dict[str, np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        return module(*vocoder_args(feeds))[0]


def test_source_noise_shapes_and_seed() -> None:
    cfg = get_preset("tiny").vocoder
    noise = source_noise(cfg, batch=2, frames=5, seed=3)
    assert noise.shape == (2, cfg.nb_harmonics + 1, 5 * 480) and noise.dtype == np.float32
    assert np.array_equal(noise, source_noise(cfg, batch=2, frames=5, seed=3))
    assert not np.array_equal(noise, source_noise(cfg, batch=2, frames=5, seed=4))


def test_tiny_vocoder_waveform() -> None:
    cfg = get_preset("tiny")
    feeds = vocoder_example_inputs(cfg, frames=9, seed=1)
    voiced = _vocoder(cfg, VOICED_HZ)
    wave = _run(voiced, feeds)
    assert cfg.vocoder.samples_per_frame == 480
    assert wave.shape == (2, 9 * 480)
    assert torch.isfinite(wave).all() and wave.abs().max() <= cfg.vocoder.audio_limit
    assert wave.abs().max() > 0
    assert torch.equal(wave, _run(voiced, feeds))
    other_noise = dict(feeds, noise=source_noise(cfg.vocoder, 2, 9, seed=99))
    assert not torch.allclose(wave, _run(voiced, other_noise))


def test_default_init_is_finite_and_output_is_clamped() -> None:
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    module = HiFTVocoder(cfg.vocoder).eval()
    feeds = vocoder_example_inputs(cfg, frames=6, seed=2)
    assert torch.isfinite(_run(module, feeds)).all()
    with torch.no_grad():
        module.conv_post.bias.fill_(8.0)  # huge log-magnitudes: the waveform must hit the limit, not pass it
    loud = _run(module, feeds)
    assert loud.abs().max() == pytest.approx(cfg.vocoder.audio_limit)


def test_state_dict_keys_are_cosyvoice2_hift() -> None:
    keys = set(HiFTVocoder(get_preset("tiny").vocoder).state_dict())
    for key in ["conv_pre.weight_g", "conv_pre.weight_v", "conv_pre.bias", "ups.0.weight_g", "ups.2.weight_v",
                "ups.1.bias", "source_downs.0.weight", "source_downs.2.bias",
                "source_resblocks.0.convs1.0.weight_g", "source_resblocks.2.convs2.2.weight_v",
                "source_resblocks.1.activations1.0.alpha", "source_resblocks.2.activations2.2.alpha",
                "resblocks.0.convs1.1.weight_g", "resblocks.8.convs2.2.weight_v", "resblocks.4.activations1.2.alpha",
                "conv_post.weight_g", "conv_post.weight_v", "conv_post.bias", "m_source.l_linear.weight",
                "m_source.l_linear.bias", "f0_predictor.condnet.0.weight_g", "f0_predictor.condnet.8.weight_v",
                "f0_predictor.condnet.4.bias", "f0_predictor.classifier.weight", "f0_predictor.classifier.bias"]:
        assert key in keys, key
    assert not {k for k in keys if k.startswith("source_downs.") and "weight_" in k}  # plain convs in HiFT
    assert {k.split(".")[0] for k in keys} == {"conv_pre", "ups", "source_downs", "source_resblocks", "resblocks",
                                              "conv_post", "m_source", "f0_predictor"}
    assert len(keys) == 328  # 12 resblocks x 24 + ups 9 + downs 6 + pre/post 6 + source 2 + f0 17


def test_full_size_shapes_match_the_published_vocoder() -> None:
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in HiFTVocoder(VocoderConfig()).state_dict().items()}
    assert shapes["conv_pre.weight_v"] == (512, 80, 7) and shapes["conv_pre.weight_g"] == (512, 1, 1)
    assert shapes["ups.0.weight_v"] == (512, 256, 16) and shapes["ups.0.weight_g"] == (512, 1, 1)
    assert shapes["ups.2.weight_v"] == (128, 64, 7)
    assert shapes["source_downs.0.weight"] == (256, 18, 30)
    assert shapes["source_downs.1.weight"] == (128, 18, 6)
    assert shapes["source_downs.2.weight"] == (64, 18, 1)
    assert shapes["source_resblocks.2.convs1.0.weight_v"] == (64, 64, 11)
    assert shapes["resblocks.8.convs1.0.weight_v"] == (64, 64, 11)
    assert shapes["conv_post.weight_v"] == (18, 64, 7)
    assert shapes["m_source.l_linear.weight"] == (1, 9)
    assert shapes["f0_predictor.condnet.0.weight_v"] == (512, 80, 3)
    assert shapes["f0_predictor.classifier.weight"] == (1, 512)


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    cfg = get_preset("tiny")
    module = _vocoder(cfg, VOICED_HZ)
    path = tmp_path / "vocoder.onnx"
    export_vocoder(module, cfg, path)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == VOCODER_INPUTS == ["mel", "noise", "harmonic_phase", "start_phase",
                                                               "start_frame"]
    assert [o.name for o in graph.output] == VOCODER_OUTPUTS == ["waveform", "frame_phase"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for frames in (7, 23):
        feeds = vocoder_example_inputs(cfg, frames=frames, seed=frames)
        got, got_phase = session.run(None, feeds)
        with torch.no_grad():
            want, want_phase = (t.numpy() for t in module(*vocoder_args(feeds)))
        assert got.shape == want.shape == (2, frames * 480)
        assert got_phase.shape == want_phase.shape == (2, cfg.vocoder.nb_harmonics + 1, frames)
        assert np.abs(got - want).max() <= 1e-4
        assert np.abs(_wrap(got_phase - want_phase)).max() <= 1e-6


# ----- the NSF sine source (spec §11) -----

def _wrap(cycles: np.ndarray) -> np.ndarray:
    return (cycles + 0.5) % 1.0 - 0.5


def nsf_source(cfg: VocoderConfig, f0: np.ndarray, phases: np.ndarray, noise: np.ndarray, weight: np.ndarray,
               bias: np.ndarray) -> np.ndarray:
    """The published algorithm written out per sample in float64: f0 (B, T) nearest-upsampled, one cumulative
    sum over the segment's samples, mod 1, the random phases, uv, noise, then Linear(H -> 1) + tanh."""
    f0_up = np.repeat(f0.astype(np.float64), cfg.samples_per_frame, axis=-1)[:, None, :]  # (B, 1, N)
    k = np.arange(1, cfg.nb_harmonics + 2, dtype=np.float64)[None, :, None]
    theta = 2 * np.pi * (np.cumsum(f0_up * k / cfg.sampling_rate, axis=-1) % 1.0) + phases[:, :, None]
    uv = f0_up > cfg.voiced_threshold
    source = cfg.sine_amp * np.sin(theta) * uv + np.where(uv, cfg.noise_std, cfg.sine_amp / 3) * noise
    return np.tanh(np.einsum("bhn,h->bn", source, weight[0].astype(np.float64)) + bias[0])


def f0_contour(frames: int, seed: int) -> np.ndarray:
    """(1, frames) Hz: voiced stretches gliding between 80 and 400 Hz, unvoiced gaps, a frame just under the
    voicing threshold."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / 50.0
    f0 = 200 + 120 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6)) + 60 * np.sin(2 * np.pi * 1.7 * t)
    f0[(np.arange(frames) // 37) % 4 == 3] = 0.0
    f0[frames // 2] = 9.5
    return f0[None].astype(np.float32)


def _f0_from_mel(cfg: ModelConfig) -> HiFTVocoder:
    """A tiny vocoder whose F0 predictor returns mel channel 0 as f0 (identity convs on channel 0, the other
    channels zero; ELU keeps non-negative values), so a test gives the graph's source any f0 it likes."""
    torch.manual_seed(0)
    module = HiFTVocoder(cfg.vocoder).eval()
    with torch.no_grad():
        for conv in module.f0_predictor.condnet[::2]:
            conv.weight_v.zero_()
            conv.weight_v[:, 0, 1] = 1.0  # every channel's direction is the centre tap of channel 0 ...
            conv.weight_g.zero_()
            conv.weight_g[0] = 1.0  # ... and only channel 0 keeps a non-zero norm
            conv.bias.zero_()
        module.f0_predictor.classifier.weight.zero_()
        module.f0_predictor.classifier.weight[0, 0] = 1.0
        module.f0_predictor.classifier.bias.zero_()
    return module


@pytest.fixture(scope="module")
def source_vocoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[HiFTVocoder, ort.InferenceSession]:
    """``_f0_from_mel``'s vocoder and its exported graph with the source excitation (the merge's tanh,
    (B, S, 1)) as one more output."""
    cfg = get_preset("tiny")
    module = _f0_from_mel(cfg)
    path = tmp_path_factory.mktemp("source") / "vocoder.onnx"
    export_vocoder(module, cfg, path)
    model = onnx.load(str(path))
    (tanh,) = [n for n in model.graph.node if n.op_type == "Tanh" and n.name.startswith("/m_source/")]
    model.graph.output.append(onnx.helper.make_tensor_value_info(tanh.output[0], onnx.TensorProto.FLOAT, None))
    return module, ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _mel_for(cfg: ModelConfig, f0: np.ndarray, seed: int) -> np.ndarray:
    mel = np.random.default_rng(seed).normal(-5.0, 2.0, (1, cfg.vocoder.num_mels, f0.shape[-1])).astype(np.float32)
    mel[:, 0] = f0
    return mel


@pytest.mark.parametrize("random_phases", [True, False])
def test_nsf_source_matches_numpy_over_10_s(source_vocoder: tuple[HiFTVocoder, ort.InferenceSession],
                                            random_phases: bool) -> None:
    cfg = get_preset("tiny")
    vc = cfg.vocoder
    module, session = source_vocoder
    frames = 500  # 10 s
    f0 = f0_contour(frames, seed=3)
    harmonics = vc.nb_harmonics + 1
    phases = (harmonic_phases(vc, 1, seed=4) if random_phases else np.zeros((1, harmonics), np.float32))
    noise = source_noise(vc, 1, frames, seed=5)
    weight, bias = (t.detach().numpy() for t in (module.m_source.l_linear.weight, module.m_source.l_linear.bias))
    want = nsf_source(vc, f0, phases, noise, weight, bias)
    start = {"start_phase": np.zeros((1, harmonics), np.float32), "start_frame": np.zeros(1, np.int64)}
    feeds = {"mel": _mel_for(cfg, f0, seed=6), "noise": noise, "harmonic_phase": phases, **start}
    with torch.no_grad():
        assert torch.equal(module.f0_predictor(torch.from_numpy(feeds["mel"])), torch.from_numpy(f0))
        got_torch = module.m_source(torch.from_numpy(f0), *vocoder_args(feeds)[1:])[0][:, 0].numpy()
    _, _, got_onnx = session.run(None, feeds)
    assert got_torch.shape == got_onnx[..., 0].shape == want.shape == (1, frames * 480)
    assert np.abs(got_torch - want).max() <= 1e-4
    assert np.abs(got_onnx[..., 0] - want).max() <= 1e-4
    uv = np.repeat(f0 > vc.voiced_threshold, 480, axis=-1)
    assert 0.5 < uv.mean() < 0.9  # both branches of the source are exercised


def test_streamed_source_equals_the_whole_segments(source_vocoder: tuple[HiFTVocoder, ort.InferenceSession],
                                                   tiny_cfg: ModelConfig) -> None:
    """Windows as the speech loop streams a segment, each taking up the phase from the one before: their
    excitations joined are the whole segment's (given the same f0, which the window's own mel supplies)."""
    cfg = tiny_cfg
    _, session = source_vocoder
    codes = np.zeros((40, cfg.bridge.num_codebooks), np.int64)
    frames = cfg.decoded_frames(len(codes))
    f0 = f0_contour(frames, seed=7)
    mel = _mel_for(cfg, f0, seed=8)
    noise = NoiseSource(cfg, seed=9)
    per_code = cfg.bridge.avg_pooler
    calls: list[int] = []

    def excitation(window: np.ndarray, first: int, phase: SourcePhase, steps: int | None = None) -> np.ndarray:
        calls.append(first)
        n = cfg.decoded_frames(len(window))
        first_frame = first * per_code
        feeds = {"mel": mel[..., first_frame:first_frame + n], "noise": noise.window(0, first, len(window))[1],
                 "harmonic_phase": noise.phases(0), **phase.feeds(first_frame)}
        _, frame_phase, source = session.run(None, feeds)
        phase.record(first_frame, frame_phase[0])
        return source[0, :, 0]

    whole = excitation(codes, 0, SourcePhase(cfg.vocoder.nb_harmonics + 1))
    calls.clear()
    for settings in (StreamSettings(8, 0, 6, 4800), StreamSettings(12, 6, 2, 4800), StreamSettings(5, 0, 6, 960)):
        stream = SegmentStream(excitation, settings, CROSSFADE, cfg)
        pieces = [w for k in range(1, len(codes) + 1) for _, w in stream.add(codes[:k])]
        joined = crossfade_join([*pieces, *(w for _, w in stream.finish(codes))], CROSSFADE)
        assert len(calls) > 3 and any(first > 0 for first in calls)
        assert joined.shape == whole.shape
        assert np.abs(joined - whole).max() <= 1e-5
        calls.clear()
    # without the carried phase every window restarts its harmonics at 0, and the joins do not match
    restart = SegmentStream(excitation, StreamSettings(8, 0, 6, 4800), CROSSFADE, cfg)
    restart.phase = Forgetful(cfg.vocoder.nb_harmonics + 1)
    pieces = [w for k in range(1, len(codes) + 1) for _, w in restart.add(codes[:k])]
    assert np.abs(crossfade_join([*pieces, *(w for _, w in restart.finish(codes))], CROSSFADE) - whole).max() > 0.01


class Forgetful(SourcePhase):
    def feeds(self, first_frame: int) -> dict[str, np.ndarray]:
        return {k: np.zeros_like(v) for k, v in super().feeds(first_frame).items()}


def test_source_phase_track_takes_up_the_anchor_frame() -> None:
    track = SourcePhase(3)
    feeds = track.feeds(0)
    assert feeds["start_phase"].shape == (1, 3) and not feeds["start_phase"].any() and feeds["start_frame"] == [0]
    track.record(0, np.tile(np.arange(1, 11, dtype=np.float32) / 20, (3, 1)))  # 10 frames decoded
    track.take_up_at(6)  # the next window starts at frame 4 and takes the phase up at frame 6
    feeds = track.feeds(4)
    assert feeds["start_frame"] == [2] and np.allclose(feeds["start_phase"], 6 / 20)
    track.record(4, np.full((3, 8), 0.9, np.float32))  # its frames 2.. (segment 6..) replace the old ones
    assert track.boundaries.shape == (3, 13) and np.allclose(track.boundaries[:, 6], 6 / 20)
    assert np.allclose(track.boundaries[:, 7:], 0.9)
    with pytest.raises(ValueError, match="outside"):
        track.take_up_at(13)
    track.take_up_at(3)
    with pytest.raises(ValueError, match="cannot take up"):
        track.feeds(4)


def _speech_log_mel(audio_16k: np.ndarray, mels: int) -> np.ndarray:
    """(1, mels, frames) natural-log magnitude mel at 50 Hz (hop 320 at 16 kHz), the vocoder's input scale:
    the spectral envelope of real speech, silences included."""
    n_fft, hop = 1024, 320
    x = np.pad(audio_16k.astype(np.float64), n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft + 1)[:-1]
    magnitude = np.abs(np.fft.rfft(frames, axis=-1))
    mel = magnitude @ slaney_filter_bank(n_fft, 16000, mels, 0.0, 8000.0)
    return np.log(np.maximum(mel, 1e-5)).T[None].astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_checkpoint_vocoder_is_voiced(tmp_path: Path, speech_16k: np.ndarray, seed: int) -> None:
    """A random checkpoint's F0 predictor says a speaking voice's f0 on speech, as a trained one does, so the
    source's sine path (not only its noise) is what every test and table on random weights runs."""
    cfg = get_preset("tiny")
    module = load_checkpoint(init_checkpoint(cfg, tmp_path / "ckpt", seed=seed), ["vocoder"]).vocoder
    mel = torch.from_numpy(_speech_log_mel(speech_16k, cfg.vocoder.num_mels))
    with torch.no_grad():
        f0 = module.f0_predictor(mel)[0].numpy()
    voiced = f0 > cfg.vocoder.voiced_threshold
    assert voiced.mean() > 0.95
    assert 60.0 < np.median(f0) < 400.0
    assert f0.std() > 0.5  # a function of the mel, not a constant


def _wide_f0_vocoder(cfg: ModelConfig) -> HiFTVocoder:
    """tiny's random vocoder (seed 0) with its F0 head's gain 12x: f0 129-217 Hz on the probe, not 139-146."""
    state = {k: random_tensor(k, s, 0) for k, s in expected_shapes(cfg, "vocoder").items()}
    state["f0_predictor.classifier.weight"] *= 12.0
    module = HiFTVocoder(cfg.vocoder).eval()
    module.load_state_dict(state)
    return module


def test_fp16_vocoder_keeps_the_f0_and_source_path_float32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fp16 vocoder's F0 predictor and source read the graph's float32 inputs and write an unrounded frame
    phase, so at a wide f0 range it stays within the fp16 recipe's 30 dB of its fp32 graph. Negative control:
    the converter's own I/O casts (inputs and outputs rounded through fp16) miss it."""
    cfg = get_preset("tiny")
    fp32 = tmp_path / "vocoder.onnx"
    export_vocoder(_wide_f0_vocoder(cfg), cfg, fp32)
    rng = np.random.default_rng(0)
    feeds = {"mel": rng.normal(-5.0, 2.0, (1, cfg.vocoder.num_mels, 40)).astype(np.float32),
             "noise": source_noise(cfg.vocoder, 1, 40, seed=9),
             "harmonic_phase": harmonic_phases(cfg.vocoder, 1, seed=9),
             "start_phase": rng.uniform(0, 1, (1, cfg.vocoder.nb_harmonics + 1)).astype(np.float32),
             "start_frame": np.zeros(1, np.int64)}

    def run(path: Path) -> list[np.ndarray]:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)

    want, want_phase = run(fp32)
    quantize_fp16(fp32, tmp_path / "fp16.onnx", "vocoder")
    got, got_phase = run(tmp_path / "fp16.onnx")
    assert snr_db(got, want) >= 30.0
    assert np.array_equal(got_phase, want_phase)  # the same f0 to the last bit, phase carried unrounded
    monkeypatch.setattr(fp16, "unround_io", lambda model: model)
    quantize_fp16(fp32, tmp_path / "rounded.onnx", "vocoder")
    rounded, rounded_phase = run(tmp_path / "rounded.onnx")
    assert snr_db(rounded, want) < 30.0 and not np.array_equal(rounded_phase, want_phase)
