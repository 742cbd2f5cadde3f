"""The HiFT vocoder (HiFi-GAN + neural source-filter + inverse STFT) as the published Baichuan-Audio code
builds it (``cosy24k_vocoder``: CosyVoice2's weights, the original NSF sine source), written for ONNX export.

Parameter names and the arithmetic follow CosyVoice's ``HiFTGenerator`` so its
``hift.pt`` state dict loads as-is (spec §11, §13). Three changes make it export and stream:
the sine source's random phases and noise are inputs (see ``HiFTVocoder.forward``
and ``bcaudio.runtime.generation.vocoder_noise``), its cumulative phase is carried in and out
(so a streamed segment keeps one continuous source), and the STFT pair is built from
convolutions (``bcaudio.export.stft``). Weight norm is computed in ``forward``
from ``weight_g`` / ``weight_v``, the names ``torch.nn.utils.weight_norm`` stores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bcaudio.config import VocoderConfig
from bcaudio.export.stft import ISTFT, STFT

# Constants of HiFT's code rather than of its config (the published generator hard-codes them).
SNAKE_EPS = 1e-9  # Snake's guard against alpha = 0
MAX_MAGNITUDE = 1e2  # the iSTFT clips exp(log-magnitude) here
POST_LRELU_SLOPE = 0.01  # the last leaky ReLU uses torch's default slope, not lrelu_slope
F0_KERNEL = 3  # the F0 predictor's conv kernel size
CONV_PRE_KERNEL = 7  # conv_pre and conv_post kernel size


def _padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class _WeightNormed(nn.Module):
    """Holds ``weight_g`` (norm per output slice, dim 0) and ``weight_v`` (direction), as torch's weight_norm does."""

    def __init__(self, shape: tuple[int, ...], bias: int) -> None:
        super().__init__()
        v = torch.empty(shape)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))  # torch's Conv default, so a fresh module is usable
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))
        self.weight_v = nn.Parameter(v)
        bound = 1 / math.sqrt(shape[1] * shape[2])
        self.bias = nn.Parameter(torch.empty(bias).uniform_(-bound, bound))

    def weight(self) -> torch.Tensor:
        v = self.weight_v
        return v * (self.weight_g / torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))


class WNConv1d(_WeightNormed):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1, padding: int | None = None) -> None:
        super().__init__((cout, cin, kernel), cout)
        self.dilation = dilation
        self.padding = _padding(kernel, dilation) if padding is None else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, dilation=self.dilation)


class WNConvTranspose1d(_WeightNormed):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__((cin, cout, kernel), cout)
        self.stride, self.padding = stride, (kernel - stride) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.weight(), self.bias, stride=self.stride, padding=self.padding)


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha, one alpha per channel (linear scale, as HiFT)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        return x + (1.0 / (alpha + SNAKE_EPS)) * torch.sin(x * alpha).pow(2)


class ResBlock(nn.Module):
    """HiFT's residual block: per dilation, Snake -> dilated conv -> Snake -> conv, added back."""

    def __init__(self, channels: int, kernel: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(WNConv1d(channels, channels, kernel, d) for d in dilations)
        self.convs2 = nn.ModuleList(WNConv1d(channels, channels, kernel) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2, strict=True):
            x = x + c2(a2(c1(a1(x))))
        return x


class F0Predictor(nn.Module):
    """CosyVoice's ConvRNNF0Predictor: weight-normed convs with ELU, then a linear head; -> |f0| in Hz per frame."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(cfg.f0_layers):
            cin = cfg.num_mels if i == 0 else cfg.f0_channels
            layers += [WNConv1d(cin, cfg.f0_channels, F0_KERNEL), nn.ELU()]
        self.condnet = nn.Sequential(*layers)  # convs at even indices: condnet.{0,2,4,...}
        self.classifier = nn.Linear(cfg.f0_channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, num_mels, T) float32 -> (B, T) float64.

        Computed in float64: the source integrates f0 into a phase, so a one-ulp fp32 difference
        in f0 (torch's and onnxruntime's convolutions sum in different orders) drifts the phase
        of every later sample. onnxruntime has no float64 Conv or Elu, so each conv is written as
        shifted copies of its input and one MatMul, and ELU as its formula; torch runs the same ops.
        """
        x = mel.double()
        for conv in self.condnet[::2]:
            x = elu(_conv_as_matmul(x, conv))
        weight, bias = self.classifier.weight.double(), self.classifier.bias.double()
        return torch.abs(torch.matmul(x.transpose(1, 2), weight.transpose(0, 1)).squeeze(-1) + bias)


def _conv_as_matmul(x: torch.Tensor, conv: WNConv1d) -> torch.Tensor:
    """A stride-1 ``conv`` (its weight norm included) on float64 ``x`` (B, C, T): (B, C_out, T)."""
    return matmul_conv(F.pad(x, (conv.padding, conv.padding)), double_weight(conv), conv.bias)


def double_weight(conv: WNConv1d) -> torch.Tensor:
    """``conv``'s weight-normed weight in float64 (C_out, C, K)."""
    v, g = conv.weight_v.double(), conv.weight_g.double()
    return v * (g / torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))


def matmul_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A stride-1 convolution without padding on float64 ``x`` (B, C, L): shifted copies of ``x`` and one MatMul,
    since onnxruntime has no float64 Conv. -> (B, C_out, L - K + 1)."""
    kernel = weight.shape[-1]
    frames = x.shape[-1] - kernel + 1
    taps = torch.stack([x[..., k:k + frames] for k in range(kernel)], dim=-2)  # (B, C, K, T)
    columns = taps.flatten(1, 2)  # (B, C * K, T), channel-major as the weight's rows
    return torch.matmul(weight.flatten(1), columns) + bias.double()[:, None]


def elu(x: torch.Tensor) -> torch.Tensor:
    """ELU as its formula: onnxruntime's Elu has no float64 kernel."""
    return torch.where(x > 0, x, torch.exp(x) - 1)


class SourceModule(nn.Module):
    """HiFT's SourceModuleHnNSF with the original NSF sine generator, as the published Baichuan-Audio
    vocoder builds it (spec §11; CosyVoice2's ``SineGen2`` is not what that code runs).

    The published code nearest-upsamples f0 to the sample rate and takes one fp32 cumulative sum
    over the whole segment, whose rounding grows with its length (the tool
    ``tools/source_phase_precision.py`` measures it). Here f0 is constant within a mel frame, so
    the same sum is written per frame: whole cycles dropped from each frame's advance, a cumulative
    sum over frames and a linear ramp inside each frame, all in float64, wrapped to [0, 1) before
    ``sin``. The phase is carried in, so a window of a segment continues the segment's phase: at
    the start of frame ``start_frame`` it is ``start_phase``, and ``frame_phase`` returns it after
    every frame for the next window to pick up (``bcaudio.runtime.generation.source_phase``).
    """

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.l_linear = nn.Linear(cfg.nb_harmonics + 1, 1)

    def forward(self, f0: torch.Tensor, noise: torch.Tensor, harmonic_phase: torch.Tensor,
                start_phase: torch.Tensor, start_frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f0 (B, T) Hz per mel frame, noise (B, H, T * S), harmonic_phase (B, H) radians, start_phase (B, H)
        cycles, start_frame (B,) -> (excitation (B, 1, T * S), frame_phase (B, H, T) cycles after each frame)."""
        cfg = self.cfg
        theta, frame_phase = self.phase(f0, harmonic_phase, start_phase, start_frame)
        sines = cfg.sine_amp * torch.sin(theta).float()
        f0_up = f0[:, None, :, None].expand(-1, -1, -1, cfg.samples_per_frame).flatten(2)  # nearest upsampling
        uv = (f0_up > cfg.voiced_threshold).to(noise.dtype)
        noise_amp = uv * cfg.noise_std + (1 - uv) * cfg.sine_amp / 3
        sines = sines * uv + noise_amp * noise
        return torch.tanh(self.l_linear(sines.transpose(1, 2))).transpose(1, 2), frame_phase

    def phase(self, f0: torch.Tensor, harmonic_phase: torch.Tensor, start_phase: torch.Tensor,
              start_frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (each harmonic's phase in radians, float64 (B, H, T * S), frame_phase float32 (B, H, T))."""
        cfg = self.cfg
        up = cfg.samples_per_frame
        harmonics = torch.arange(1, cfg.nb_harmonics + 2, dtype=torch.float64)[None, :, None]
        step = f0.double()[:, None, :] * harmonics / cfg.sampling_rate  # (B, H, T): cycles per sample
        advance = step * up
        advance = advance - torch.floor(advance)  # a frame's advance, whole cycles dropped
        after = torch.cumsum(advance, dim=-1)  # after each frame, relative to the window's start
        before = after - advance
        anchor = start_frame.view(-1, 1, 1).expand(-1, before.shape[1], 1)
        offset = start_phase.double()[:, :, None] - torch.gather(before, 2, anchor)
        ramp = torch.arange(1, up + 1, dtype=torch.float64)  # the sum is inclusive: sample j has advanced j + 1
        cycles = ((before + offset)[..., None] + step[..., None] * ramp).flatten(2)  # (B, H, T * S)
        theta = 2 * math.pi * (cycles - torch.floor(cycles)) + harmonic_phase.double()[:, :, None]
        frame_phase = after + offset
        return theta, (frame_phase - torch.floor(frame_phase)).float()


class HiFTVocoder(nn.Module):
    """Mel (50 Hz) -> 24 kHz waveform, ``samples_per_frame`` samples per mel frame."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_fft, c = cfg.istft_n_fft, cfg.base_channels
        self.bins = n_fft // 2 + 1
        self.m_source = SourceModule(cfg)
        self.f0_predictor = F0Predictor(cfg)
        self.conv_pre = WNConv1d(cfg.num_mels, c, CONV_PRE_KERNEL)
        self.ups = nn.ModuleList(
            WNConvTranspose1d(c // 2**i, c // 2 ** (i + 1), k, u)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)))
        # The source spectrum (hop istft_hop) is brought to each stage's rate: the strides are the
        # remaining upsample factors, coarsest stage first; the last stage already matches.
        strides = [math.prod(cfg.upsample_rates[i + 1:]) for i in range(len(cfg.upsample_rates))]
        self.source_downs = nn.ModuleList(
            nn.Conv1d(2 * self.bins, c // 2 ** (i + 1), 1) if s == 1
            else nn.Conv1d(2 * self.bins, c // 2 ** (i + 1), 2 * s, s, padding=s // 2)
            for i, s in enumerate(strides))
        self.source_resblocks = nn.ModuleList(
            ResBlock(c // 2 ** (i + 1), k, d)
            for i, (k, d) in enumerate(zip(cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilations,
                                           strict=True)))
        self.resblocks = nn.ModuleList(
            ResBlock(c // 2 ** (i + 1), k, d)
            for i in range(len(cfg.upsample_rates))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations, strict=True))
        self.conv_post = WNConv1d(c // 2 ** len(cfg.upsample_rates), 2 * self.bins, CONV_PRE_KERNEL)
        self.stft = STFT(n_fft, cfg.istft_hop)
        self.istft = ISTFT(n_fft, cfg.istft_hop)

    def forward(self, mel: torch.Tensor, noise: torch.Tensor, harmonic_phase: torch.Tensor,
                start_phase: torch.Tensor, start_frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (waveform (B, T * samples_per_frame) in [-audio_limit, audio_limit], frame_phase (B, H, T)).

        mel:            (B, num_mels, T) float32 log-mel at 50 Hz.
        noise:          (B, H, T * samples_per_frame) float32 standard normal (H = nb_harmonics + 1), scaled
                        here by noise_std where voiced and sine_amp / 3 where unvoiced.
        harmonic_phase: (B, H) float32 radians, the harmonics' random initial phases (the first is 0).
        start_phase:    (B, H) float32 cycles, the segment's cumulative source phase at the start of
        start_frame:    (B,) int64, a frame of this window (0 and 0 for a whole segment).
        ``bcaudio.runtime.generation.vocoder_noise`` draws the random inputs; frame_phase is the
        cumulative phase (cycles in [0, 1)) after each frame, which the next window of a streamed
        segment starts from.
        """
        cfg = self.cfg
        excitation, frame_phase = self.m_source(self.f0_predictor(mel), noise, harmonic_phase, start_phase,
                                                start_frame)
        source = self.stft(excitation[:, 0])
        x = self.conv_pre(mel)
        kernels = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")  # one more frame: the iSTFT's center frame count
            x = x + self.source_resblocks[i](self.source_downs[i](source))
            xs = self.resblocks[i * kernels](x)
            for j in range(1, kernels):
                xs = xs + self.resblocks[i * kernels + j](x)
            x = xs / kernels
        x = self.conv_post(F.leaky_relu(x, POST_LRELU_SLOPE))
        magnitude = torch.exp(x[:, :self.bins]).clamp(max=MAX_MAGNITUDE)
        angle = torch.sin(x[:, self.bins:])  # HiFT's redundant sin, kept for parity
        wave = self.istft(magnitude * torch.cos(angle), magnitude * torch.sin(angle))
        return wave.clamp(-cfg.audio_limit, cfg.audio_limit), frame_phase
