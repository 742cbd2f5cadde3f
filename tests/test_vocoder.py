"""HiFT vocoder: conv-based STFT pair vs torch, the reference module's behaviour and key names, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bcaudio.config import ModelConfig, VocoderConfig
from bcaudio.export.export_vocoder import export_vocoder, vocoder_example_inputs
from bcaudio.export.stft import ISTFT, STFT
from bcaudio.export.vocoder import HiFTVocoder
from bcaudio.presets import get_preset
from bcaudio.runtime.generation.vocoder_noise import source_noise

VOICED_HZ = 200.0  # well above voiced_threshold, so the harmonic source is active


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
        return module(*(torch.from_numpy(feeds[n]) for n in ("mel", "noise")))


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
    assert [i.name for i in graph.input] == ["mel", "noise"]
    assert [o.name for o in graph.output] == ["waveform"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for frames in (7, 23):
        feeds = vocoder_example_inputs(cfg, frames=frames, seed=frames)
        (got,) = session.run(None, feeds)
        want = _run(module, feeds).numpy()
        assert got.shape == want.shape == (2, frames * 480)
        assert np.abs(got - want).max() <= 1e-4


def test_source_is_sinegen2_phase_integrated_per_frame_and_linearly_upsampled() -> None:
    """Against a direct numpy transcription of SineGen2 (F.interpolate semantics written out)."""
    cfg = get_preset("tiny").vocoder
    module = _vocoder(get_preset("tiny"), 0.0).m_source
    f0 = np.array([[0.0, 120.0, 180.0, 250.0, 5.0]])  # unvoiced, voiced frames, then below the threshold
    up, h = cfg.samples_per_frame, np.arange(1, cfg.nb_harmonics + 2)
    rad = (f0[:, None, :] * h[None, :, None] / cfg.sampling_rate) % 1
    cycles = np.cumsum(rad, axis=-1) * up
    src = np.maximum((np.arange(5 * up) + 0.5) / up - 0.5, 0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, 4)
    phase = cycles[..., lo] * (1 - (src - lo)) + cycles[..., hi] * (src - lo)
    uv = np.repeat(f0 > cfg.voiced_threshold, up, axis=-1)[:, None]
    noise = np.random.default_rng(0).standard_normal((1, cfg.nb_harmonics + 1, 5 * up)).astype(np.float32)
    sines = cfg.sine_amp * np.sin(2 * np.pi * phase) * uv + np.where(uv, cfg.noise_std, cfg.sine_amp / 3) * noise
    with torch.no_grad():
        want = np.tanh(sines.transpose(0, 2, 1) @ module.l_linear.weight.numpy().T + module.l_linear.bias.numpy())
        got = module(torch.tensor(f0, dtype=torch.float32), torch.from_numpy(noise))
    assert np.abs(got.numpy()[0, 0] - want[0, :, 0]).max() < 1e-5
