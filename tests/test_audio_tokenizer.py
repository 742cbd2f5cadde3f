"""Audio tokenizer side: log-mel, Whisper encoder, bridge + RVQ, detokenizer, ONNX export, chunking.

transformers' Whisper (feature extractor, mel filters, encoder layer, encoder) is the independent oracle.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperEncoderLayer

from bcaudio.config import ModelConfig
from bcaudio.export.audio_tokenizer import (
    AudioTokenizer,
    audio_tokenizer_example_inputs,
    detokenizer_example_codes,
    export_audio_tokenizer,
)
from bcaudio.export.bridge import AudioBridge
from bcaudio.export.detokenizer import AudioDetokenizer
from bcaudio.export.encoder import AudioEncoder, encoder_frames
from bcaudio.export.frontend import (
    DYNAMIC_RANGE,
    LOG_FLOOR,
    LogMel,
    frames_with_signal,
    slaney_mel_filters,
)
from bcaudio.export.layers import causal_bias
from bcaudio.export.whisper_layer import WhisperLayer, key_padding_bias
from bcaudio.runtime.generation.audio_chunks import chunk_audio, kept_frames, token_frames

SR = 16000


def _hf_whisper_config(cfg: ModelConfig, max_source_positions: int = 1500) -> WhisperConfig:
    e = cfg.encoder
    return WhisperConfig(num_mel_bins=cfg.frontend.num_mel_bins, d_model=e.d_model, encoder_layers=e.layers,
                         encoder_attention_heads=e.heads, encoder_ffn_dim=e.ffn_dim, activation_function="gelu",
                         max_source_positions=max_source_positions, attn_implementation="eager")


def _padded_30s_log_mel(frontend: LogMel, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference recipe taken literally: zero-pad to 30 s, all 3000 frames, max over all of them.

    -> (normalised log-mel cut to the kept frames, raw log10 mel of all 3000 frames).
    """
    cfg = frontend.cfg
    padded = F.pad(audio, (0, cfg.chunk_samples - audio.shape[-1]))
    centered = F.pad(padded[:, None], (cfg.n_fft // 2, cfg.n_fft // 2), mode="reflect")[:, 0]
    raw = torch.log10(torch.clamp(frontend.mel_power(centered)[:, :, : cfg.max_frames], min=LOG_FLOOR))
    norm = (torch.maximum(raw, raw.amax() - DYNAMIC_RANGE) + 4.0) / 4.0
    return norm[:, :, : kept_frames(audio.shape[-1], cfg)], raw


# ----- (1), (2) log-mel -----

def test_mel_filters_equal_transformers(tiny_cfg: ModelConfig) -> None:
    fe = tiny_cfg.frontend
    ref = mel_filter_bank(num_frequency_bins=fe.n_fft // 2 + 1, num_mel_filters=fe.num_mel_bins, min_frequency=0.0,
                          max_frequency=8000.0, sampling_rate=SR, norm="slaney", mel_scale="slaney")
    assert np.abs(slaney_mel_filters(fe) - ref).max() < 1e-12


def test_log_mel_equals_whisper_feature_extractor(tiny_cfg: ModelConfig, speech_16k: np.ndarray) -> None:
    """Oracle: transformers' numpy path (float64 FFT). Measured max error 1.6e-5: the fp32 DFT conv."""
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=SR)
    ref = fe._np_extract_fbank_features(np.pad(speech_16k, (0, 30 * SR - speech_16k.size))[None], "cpu")[0]
    with torch.no_grad():
        ours = LogMel(tiny_cfg.frontend)(torch.from_numpy(speech_16k)[None])[0].numpy()
    k = kept_frames(speech_16k.size, tiny_cfg.frontend)
    assert ours.shape == (128, k) == (128, min(3000, speech_16k.size // 160 + 1))
    assert np.abs(ours - ref[:, :k]).max() < 1e-4


@pytest.mark.parametrize("samples", [150, 1000, 20800, 71330, 30 * SR - 30, 30 * SR])
def test_short_clip_frames_equal_padded_30s(tiny_cfg: ModelConfig, samples: int) -> None:
    """Only frames_with_signal frames are computed; every later frame of the 30 s recipe is exactly the -10 floor.

    The lengths cover a clip shorter than the left reflection (150), a typical clip, and the two
    near-full chunks whose last frame reflects real samples at the 30 s edge. The bound is fp32 noise, not
    semantics: for inputs of a few frames conv1d takes another kernel than for 3000 frames and sums in another
    order (up to 1.3e-6 measured at 150 and 1000 samples; bitwise equal from 20800 samples up).
    """
    cfg = tiny_cfg.frontend
    audio = torch.from_numpy(0.1 * np.random.default_rng(samples).standard_normal((1, samples)).astype(np.float32))
    frontend = LogMel(cfg)
    with torch.no_grad():
        ours = frontend(audio)
        ref, raw = _padded_30s_log_mel(frontend, audio)
    computed = frames_with_signal(samples, cfg)
    assert kept_frames(samples, cfg) <= computed <= cfg.max_frames
    assert torch.all(raw[:, :, computed:] == np.log10(LOG_FLOOR))
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-5


# ----- (3) encoder -----

def _copy_layer(ours: WhisperLayer, cfg: ModelConfig) -> WhisperEncoderLayer:
    hf = WhisperEncoderLayer(_hf_whisper_config(cfg)).eval()
    hf.load_state_dict(ours.state_dict())  # same names: the checkpoint's are Whisper's
    return hf


def test_whisper_layer_equals_transformers(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    e = tiny_cfg.encoder
    ours = WhisperLayer(e.d_model, e.heads, e.ffn_dim).eval()
    causal = WhisperLayer(e.d_model, e.heads, e.ffn_dim, causal=True).eval()
    causal.load_state_dict(ours.state_dict())
    hf = _copy_layer(ours, tiny_cfg)
    x = torch.randn(2, 37, e.d_model)
    pad = key_padding_bias(torch.tensor([37, 20]), 37)
    with torch.no_grad():
        assert (ours(x) - hf(x, None, None)[0]).abs().max() < 1e-5
        assert (ours(x, pad) - hf(x, pad, None)[0]).abs().max() < 1e-5
        assert (causal(x) - hf(x, causal_bias(37, 37)[None, None], None)[0]).abs().max() < 1e-5


def test_encoder_equals_transformers_whisper_encoder(tiny_cfg: ModelConfig) -> None:
    """HF's encoder insists on exactly 2 * max_source_positions frames: give it a 100-position table."""
    torch.manual_seed(0)
    ours = AudioEncoder(tiny_cfg).eval()
    hf = WhisperEncoder(_hf_whisper_config(tiny_cfg, max_source_positions=100)).eval()
    state = {k: v for k, v in ours.state_dict().items() if k != "positional_embedding"}
    state["embed_positions.weight"] = ours.positional_embedding[:100]
    hf.load_state_dict(state)
    mel = torch.randn(1, tiny_cfg.frontend.num_mel_bins, 200)
    with torch.no_grad():
        out = ours(mel)
        assert out.shape == (1, 100, tiny_cfg.encoder.d_model)
        assert (out - hf(mel).last_hidden_state).abs().max() < 1e-5


def test_encoder_batch_with_lengths_equals_each_chunk_alone(tiny_cfg: ModelConfig) -> None:
    """Varlen semantics: a padded item equals its unpadded run (odd length: conv2 reads one frame past it)."""
    torch.manual_seed(0)
    enc = AudioEncoder(tiny_cfg).eval()
    lengths = torch.tensor([120, 77])
    mel = torch.randn(2, tiny_cfg.frontend.num_mel_bins, 120)
    with torch.no_grad():
        batch = enc(mel, lengths)
        assert batch.shape[1] == encoder_frames(120) == 60
        for i, n in enumerate(lengths.tolist()):
            alone = enc(mel[i:i + 1, :, :n])
            m = encoder_frames(n)
            assert alone.shape[1] == m
            assert (batch[i, :m] - alone[0]).abs().max() < 1e-5
            assert torch.all(batch[i, m:] == 0)


# ----- (4) bridge and RVQ -----

def test_bridge_token_count_is_floor_of_encoder_frames(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    bridge = AudioBridge(tiny_cfg).eval()
    x = torch.randn(1, 51, tiny_cfg.encoder.d_model)  # 1 s: 101 mel -> 51 encoder frames -> 12 tokens
    with torch.no_grad():
        z = bridge(x)
        assert z.shape == (1, 12, tiny_cfg.rvq_dim)
        # The reference pads to 52 frames and keeps the first 51 // 4 tokens: the same 12 vectors.
        padded = bridge(F.pad(x, (0, 0, 0, 1)))
    assert torch.equal(z, padded[:, :12])
    assert token_frames(SR, tiny_cfg) == 12


def test_rvq_nearest_neighbour_equals_brute_force(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    bridge = AudioBridge(tiny_cfg).eval()
    z = torch.randn(2, 50, tiny_cfg.rvq_dim)
    with torch.no_grad():
        codes = bridge.quantize(z)
    assert codes.dtype == torch.int64 and codes.shape == (2, 50, tiny_cfg.bridge.num_codebooks)
    residual = z.numpy().reshape(-1, tiny_cfg.rvq_dim).astype(np.float64)
    for i, vq in enumerate(bridge.vq_list):
        book = vq.codebook.embed.detach().numpy().astype(np.float64)
        dist = ((residual[:, None, :] - book[None, :, :]) ** 2).sum(-1)
        expected = dist.argmin(-1)
        assert np.array_equal(codes[..., i].reshape(-1).numpy(), expected)
        residual = residual - book[expected]


def test_requantizing_dequantized_codes_returns_them(tiny_cfg: ModelConfig) -> None:
    """Holds when each later stage is smaller than half the code spacing of the earlier ones, as after training:
    random codebooks get geometrically shrinking scales to be in that regime."""
    torch.manual_seed(0)
    bridge = AudioBridge(tiny_cfg).eval()
    with torch.no_grad():
        for i, vq in enumerate(bridge.vq_list):
            vq.codebook.embed.mul_(0.25**i)
        codes = torch.from_numpy(detokenizer_example_codes(tiny_cfg, 40, seed=3))
        z = bridge.dequantize(codes)
        assert torch.equal(bridge.quantize(z), codes)
        emb = bridge.decode(codes)
    assert emb.shape == (1, 40, tiny_cfg.encoder.d_model)


# ----- (5) detokenizer -----

def test_detokenizer_shape_and_causality(tiny_cfg: ModelConfig) -> None:
    """Kernel 3 < stride 4: token t writes frames 4t..4t+2 (4t+3 is bias only), so before the norm frames < 4t
    ignore tokens >= t exactly; after it the causal layers keep frames < f blind to frames >= f."""
    torch.manual_seed(0)
    bridge, detok = AudioBridge(tiny_cfg).eval(), AudioDetokenizer(tiny_cfg).eval()
    tokens, t = 10, 6
    codes = torch.from_numpy(detokenizer_example_codes(tiny_cfg, tokens, seed=1))
    later = codes.clone()
    later[:, t:] = torch.from_numpy(detokenizer_example_codes(tiny_cfg, tokens - t, seed=2))
    with torch.no_grad():
        states = detok(codes, bridge)
        assert states.shape == (1, tiny_cfg.decoded_frames(tokens), tiny_cfg.encoder.d_model) == (1, 39, 64)
        conv = detok.dconv1.conv
        pre_a, pre_b = (conv(bridge.decode(c).transpose(1, 2)) for c in (codes, later))
        assert torch.equal(pre_a[..., : 4 * t], pre_b[..., : 4 * t])
        assert (pre_a[..., 4 * t] - pre_b[..., 4 * t]).abs().max() > 1e-3
        frames = detok.upsample(codes, bridge)
        changed = frames.clone()
        changed[:, 4 * t:] += torch.randn_like(changed[:, 4 * t:])
        a, b = detok.transform(frames), detok.transform(changed)
        assert (a[:, : 4 * t] - b[:, : 4 * t]).abs().max() < 1e-6
        assert torch.allclose(a, states)


def test_detokenizer_groupnorm_makes_it_non_causal(tiny_cfg: ModelConfig) -> None:
    """As published, GroupNorm(1 group) pools mean and variance over the whole segment: later codes move
    every earlier frame. Pinned so that nobody streams inside a segment believing it exact."""
    torch.manual_seed(0)
    bridge, detok = AudioBridge(tiny_cfg).eval(), AudioDetokenizer(tiny_cfg).eval()
    codes = torch.from_numpy(detokenizer_example_codes(tiny_cfg, 10, seed=1))
    later = codes.clone()
    later[:, 9] = torch.from_numpy(detokenizer_example_codes(tiny_cfg, 1, seed=5))[:, 0]
    with torch.no_grad():
        assert (detok(codes, bridge)[:, :4] - detok(later, bridge)[:, :4]).abs().max() > 1e-4


# ----- (6) ONNX -----

@pytest.fixture(scope="module")
def tokenizer_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[AudioTokenizer, ort.InferenceSession]:
    from bcaudio.presets import get_preset

    cfg = get_preset("tiny")
    torch.manual_seed(0)
    module = AudioTokenizer(cfg, AudioEncoder(cfg), AudioBridge(cfg)).eval()
    files = export_audio_tokenizer(module, cfg, tmp_path_factory.mktemp("onnx") / "audio_tokenizer.onnx")
    return module, ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])


def test_onnx_io_names_and_types(tokenizer_onnx: tuple[AudioTokenizer, ort.InferenceSession]) -> None:
    _, sess = tokenizer_onnx
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("waveform", "tensor(float)", [1, "samples"])
    assert (out.name, out.type) == ("codes", "tensor(int64)")
    assert out.shape[0] == 1 and out.shape[2] == 8


@pytest.mark.parametrize("source", ["speech", "noise_1.3s"])
def test_onnx_codes_equal_torch(tokenizer_onnx: tuple[AudioTokenizer, ort.InferenceSession], tiny_cfg: ModelConfig,
                                speech_16k: np.ndarray, source: str) -> None:
    module, sess = tokenizer_onnx
    if source == "speech":
        wave = speech_16k[None].astype(np.float32)
    else:
        wave = audio_tokenizer_example_inputs(tiny_cfg, 1.3, seed=7)["waveform"]
    (codes,) = sess.run(None, {"waveform": wave})
    with torch.no_grad():
        expected = module(torch.from_numpy(wave)).numpy()
    assert codes.shape == (1, token_frames(wave.shape[1], tiny_cfg), 8)
    assert np.array_equal(codes, expected)


# ----- (7) chunking -----

def test_chunk_audio_cuts_30s_pieces(tiny_cfg: ModelConfig) -> None:
    fe = tiny_cfg.frontend
    short = np.zeros(5 * SR, np.float32)
    assert [c.size for c in chunk_audio(short, fe)] == [5 * SR]
    long = np.arange(65 * SR + 399, dtype=np.float32)  # a 399-sample tail after the 5 s: shorter than one window
    chunks = chunk_audio(long, fe)
    assert [c.size for c in chunks] == [30 * SR, 30 * SR, 5 * SR + 399]
    assert np.array_equal(np.concatenate(chunks), long)
    tail_dropped = chunk_audio(np.zeros(60 * SR + 399, np.float32), fe)
    assert [c.size for c in tail_dropped] == [30 * SR, 30 * SR]


def test_shortest_chunk_with_a_token(tokenizer_onnx: tuple[AudioTokenizer, ort.InferenceSession],
                                     tiny_cfg: ModelConfig) -> None:
    """960 samples -> 7 mel -> 4 encoder frames -> 1 token; one sample less gives none (the caller skips it)."""
    _, sess = tokenizer_onnx
    assert token_frames(959, tiny_cfg) == 0 and token_frames(960, tiny_cfg) == 1
    wave = audio_tokenizer_example_inputs(tiny_cfg, 960 / SR, seed=4)["waveform"]
    assert sess.run(None, {"waveform": wave})[0].shape == (1, 1, 8)


def test_long_audio_codes_are_per_chunk(tokenizer_onnx: tuple[AudioTokenizer, ort.InferenceSession],
                                        tiny_cfg: ModelConfig) -> None:
    _, sess = tokenizer_onnx
    wave = audio_tokenizer_example_inputs(tiny_cfg, 31.0, seed=9)["waveform"][0]
    codes = [sess.run(None, {"waveform": c[None]})[0] for c in chunk_audio(wave, tiny_cfg.frontend)]
    total = np.concatenate(codes, axis=1)
    assert total.shape == (1, 375 + 12, 8)  # 30 s -> 3000 mel -> 1500 encoder -> 375; 1 s -> 12
    # The graph itself cuts at 30 s: an over-long input tokenizes as its first chunk.
    assert np.array_equal(sess.run(None, {"waveform": wave[None]})[0], codes[0])

