"""The HiFT vocoder run on a segment's mel a chunk at a time, each mel frame vocoded once, with the same
waveform as one whole-segment call: the stateful graph that ``vocoder_stream`` exports.

Decoding a streamed segment in windows (``runtime/generation/segment_stream.py``) vocodes the left
context and the held-back end of every window again: 1.3 mel frames vocoded per frame on a ``small``
turn (docs/benchmarks.md, "Session 10"). Here every convolution keeps the end of its input that
its next outputs still need (a convolution of kernel span K keeps K - 1 samples, a strided one
what its stride has not consumed), every transposed convolution keeps its overlap-add tail, and
every sum of two branches keeps what the faster branch has made ahead of the slower one; the sine
source keeps its cumulative phase. So a chunk's output is exactly the samples of the whole
segment's waveform whose inputs have all arrived: it lags the mel by the network's lookahead
(``StreamingHiFT.lag_samples``) and the last call (``final``) flushes the rest with the whole segment's
right padding. The first call (``first``) applies the left padding: zeros before each convolution,
the reflections of the source STFT and of the last upsampling stage. Every state starts empty
(time length 0) except the source phase (zeros), so a runtime builds the first states from the
graph's input shapes alone.

Lengths are computed as tensors (``_length``) and cut with tensor bounds, so the traced graph
keeps them dynamic: a constant there would be a silently wrong length on the next call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx import operators

from bcaudio.export.vocoder import (
    MAX_MAGNITUDE,
    POST_LRELU_SLOPE,
    HiFTVocoder,
    ResBlock,
    double_weight,
    elu,
    matmul_conv,
)

Tensor = torch.Tensor
DRY_RUN_FRAMES = 64  # more than the lookahead: every layer of a first call of this many frames has output


def _length(x: Tensor) -> Tensor:
    return operators.shape_as_tensor(x)[-1]


def _take(x: Tensor, start: Tensor | int, end: Tensor | int) -> Tensor:
    """x[..., start:end]: the trace keeps tensor bounds as a dynamic Slice (a Gather there costs a quarter of
    the graph's time)."""
    return x[..., start:end]


def _zeros(like: Tensor, channels: int, length: int) -> Tensor:
    return torch.zeros(1, channels, length, dtype=like.dtype).expand(like.shape[0], -1, -1)


class _States:
    """One call's state tensors in a fixed order: ``take`` the one a layer held, ``put`` the one it leaves; and
    the call's ``first`` / ``final`` flags. Given no states, every ``take`` is the state a segment starts with:
    empty in time, or zeros for ``zeros``."""

    def __init__(self, states: list[Tensor], first: Tensor, final: Tensor) -> None:
        self.inputs, self.outputs, self.fresh = list(states), [], not states
        self.first, self.final = first.reshape(()), final.reshape(())  # this call's flags, 0 or 1

    def take(self, like: Tensor, zeros: bool = False) -> Tensor:
        """``like``: a tensor of the state's batch, channels and dtype (the state itself when ``zeros``)."""
        if self.fresh:
            return torch.zeros_like(like) if zeros else like.new_zeros(like.shape[0], like.shape[1], 0)
        return self.inputs.pop(0)

    def put(self, state: Tensor) -> None:
        self.outputs.append(state)


class StreamingHiFT(nn.Module):
    """``HiFTVocoder`` in chunks; ``forward(mel, noise, harmonic_phase, first, final, *states)`` ->
    ``(waveform, *states)``. ``noise`` belongs to the chunk's mel frames, as for the whole segment."""

    def __init__(self, vocoder: HiFTVocoder) -> None:
        super().__init__()
        self.vocoder = vocoder
        self._dry: tuple[int, int] | None = None  # (states, samples out) of a first call on silence

    def _first_call(self) -> tuple[int, int]:
        if self._dry is None:
            cfg, frames = self.vocoder.cfg, DRY_RUN_FRAMES
            with torch.no_grad():
                wave, *states = self(torch.zeros(1, cfg.num_mels, frames),
                                     torch.zeros(1, cfg.nb_harmonics + 1, frames * cfg.samples_per_frame),
                                     torch.zeros(1, cfg.nb_harmonics + 1), torch.ones(1, dtype=torch.int64),
                                     torch.zeros(1, dtype=torch.int64))
            self._dry = len(states), wave.shape[-1]
        return self._dry

    def state_count(self) -> int:
        """How many states a call takes and returns."""
        return self._first_call()[0]

    def lag_samples(self) -> int:
        """How far the output trails the mel fed (the network's lookahead): a first call needs more frames than
        this, and a non-final call's last output sample is this many before its last frame's end."""
        return DRY_RUN_FRAMES * self.vocoder.cfg.samples_per_frame - self._first_call()[1]

    def forward(self, mel: Tensor, noise: Tensor, harmonic_phase: Tensor, first: Tensor, final: Tensor,
                *states: Tensor) -> tuple[Tensor, ...]:
        v, cfg = self.vocoder, self.vocoder.cfg
        if states and len(states) != self.state_count():
            raise ValueError(f"{len(states)} states given, this vocoder carries {self.state_count()}: pass the "
                             "states the previous call returned, or none on a segment's first call")
        io = _States(list(states), first, final)
        f0 = self._f0(mel.double(), io)
        excitation = self._source(f0, noise, harmonic_phase, io)
        source = self._stft(excitation, io)
        x = self._conv(mel, v.conv_pre, io)
        kernels = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(v.ups):
            x = self._conv_transpose(F.leaky_relu(x, cfg.lrelu_slope), up.weight(), up.bias, up.stride, up.padding, io)
            if i == len(v.ups) - 1:
                x = torch.cat([_take(x, 1, 1 + io.first), x], -1)  # the reflect pad (1, 0)
            down = v.source_downs[i]
            branch = self._conv(source, down, io, weight=down.weight, stride=down.stride[0], padding=down.padding[0])
            x = self._add(x, self._resblock(branch, v.source_resblocks[i], io), io)
            xs = self._resblock(x, v.resblocks[i * kernels], io)
            for j in range(1, kernels):
                xs = self._add(xs, self._resblock(x, v.resblocks[i * kernels + j], io), io)
            x = xs / kernels
        x = self._conv(F.leaky_relu(x, POST_LRELU_SLOPE), v.conv_post, io)
        magnitude = torch.exp(x[:, :v.bins]).clamp(max=MAX_MAGNITUDE)
        angle = torch.sin(x[:, v.bins:])
        spectrum = torch.cat([magnitude * torch.cos(angle), magnitude * torch.sin(angle)], dim=1)
        hop, pad = v.istft.hop, v.istft.n_fft // 2
        frames = self._conv_transpose(spectrum, v.istft.basis, None, hop, pad, io)
        envelope = self._conv_transpose(torch.ones_like(spectrum[:, :1]), v.istft.window_sq, None, hop, pad, io)
        wave = (frames / envelope)[:, 0].clamp(-cfg.audio_limit, cfg.audio_limit)
        return (wave, *io.outputs)

    # ----- the layers, each with the state it carries -----

    def _buffer(self, x: Tensor, io: _States, left: int, right: int) -> Tensor:
        """The layer's kept input, then ``x``; zero padding before the segment (``first``) and after (``final``)."""
        first, final = io.first, io.final
        held = io.take(x)
        return torch.cat([_take(_zeros(x, x.shape[1], left), 0, left * first), held, x,
                          _take(_zeros(x, x.shape[1], right), 0, right * final)], -1)

    def _valid(self, buffer: Tensor, span: int, stride: int, io: _States,
               apply: Callable[[Tensor], Tensor]) -> Tensor:
        """``apply`` (a convolution without padding) on every whole window of ``buffer``; keeps the rest."""
        count = torch.clamp((_length(buffer) - span) // stride + 1, min=0)
        io.put(_take(buffer, count * stride, _length(buffer)))
        return apply(buffer if stride == 1 else _take(buffer, 0, (count - 1) * stride + span))  # 1: all of it

    def _conv(self, x: Tensor, conv: nn.Module, io: _States, weight: Tensor | None = None, stride: int = 1,
              padding: int | None = None) -> Tensor:
        """A weight-normed ``WNConv1d`` (or a plain ``nn.Conv1d`` with its weight, stride and padding given)."""
        weight = conv.weight() if weight is None else weight
        dilation = getattr(conv, "dilation", 1)
        dilation = dilation if isinstance(dilation, int) else dilation[0]
        padding = conv.padding if padding is None else padding
        span = (weight.shape[-1] - 1) * dilation + 1
        buffer = self._buffer(x, io, padding, padding)
        return self._valid(buffer, span, stride, io,
                           lambda b: F.conv1d(b, weight, conv.bias, stride=stride, dilation=dilation))

    def _conv_transpose(self, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int,
                        io: _States) -> Tensor:
        """Overlap-add: each call's inputs complete ``stride`` samples apiece; the ``kernel - stride`` after them
        wait in the tail for the next call's. ``padding`` samples are cut at the segment's start and end."""
        first, final = io.first, io.final
        overlap = weight.shape[-1] - stride
        full = F.conv_transpose1d(x, weight, stride=stride)  # (n - 1) * stride + kernel samples
        tail = torch.cat([_take(_zeros(full, full.shape[1], overlap), 0, overlap * first), io.take(full)], -1)
        full = full + torch.cat([tail, _zeros(full, full.shape[1], 1).expand(-1, -1, _length(full) - overlap)], -1)
        done = _length(full) - overlap
        io.put(_take(full, done, _length(full)))
        out = _take(full, padding * first, done + (overlap - padding) * final)
        return out if bias is None else out + bias[:, None]

    def _add(self, a: Tensor, b: Tensor, io: _States) -> Tensor:
        """a + b where both have arrived; the one ahead keeps its extra samples for the next call."""
        a, b = torch.cat([io.take(a), a], -1), torch.cat([io.take(b), b], -1)
        count = torch.minimum(_length(a), _length(b))
        io.put(_take(a, count, _length(a)))
        io.put(_take(b, count, _length(b)))
        return _take(a, 0, count) + _take(b, 0, count)

    def _behind_add(self, ahead: Tensor, behind: Tensor, io: _States) -> Tensor:
        """``_add`` where ``behind`` never has more samples than ``ahead`` (a residual branch lags its input
        by its convolutions' lookahead): one state, and no copy of ``behind``."""
        ahead = torch.cat([io.take(ahead), ahead], -1)
        io.put(_take(ahead, _length(behind), _length(ahead)))
        return _take(ahead, 0, _length(behind)) + behind

    def _resblock(self, x: Tensor, block: ResBlock, io: _States) -> Tensor:
        for c1, c2, a1, a2 in zip(block.convs1, block.convs2, block.activations1, block.activations2, strict=True):
            x = self._behind_add(x, self._conv(a2(self._conv(a1(x), c1, io)), c2, io), io)
        return x

    # ----- the source path: f0, the sine source, its STFT -----

    def _f0(self, mel: Tensor, io: _States) -> Tensor:
        """The F0 predictor in float64, as ``F0Predictor`` (see there why)."""
        predictor = self.vocoder.f0_predictor
        x = mel
        for conv in predictor.condnet[::2]:
            weight = double_weight(conv)
            buffer = self._buffer(x, io, conv.padding, conv.padding)
            x = elu(self._valid(buffer, weight.shape[-1], 1, io,
                                 lambda b, weight=weight, bias=conv.bias: matmul_conv(b, weight, bias)))
        weight, bias = predictor.classifier.weight.double(), predictor.classifier.bias.double()
        return torch.abs(torch.matmul(x.transpose(1, 2), weight.transpose(0, 1)).squeeze(-1) + bias)

    def _source(self, f0: Tensor, noise: Tensor, harmonic_phase: Tensor, io: _States) -> Tensor:
        """The sine source of the frames whose f0 is known; the noise of later frames and the phase wait."""
        samples = self.vocoder.cfg.samples_per_frame
        noise = torch.cat([io.take(noise), noise], -1)
        count = _length(f0) * samples
        io.put(_take(noise, count, _length(noise)))
        phase = io.take(harmonic_phase, zeros=True)
        start = torch.zeros_like(harmonic_phase[:, 0], dtype=torch.int64)
        excitation, frame_phase = self.vocoder.m_source(f0, _take(noise, 0, count), harmonic_phase, phase, start)
        io.put(_take(torch.cat([phase[..., None], frame_phase], -1), _length(f0), _length(f0) + 1)[..., 0])
        return excitation[:, 0]

    def _stft(self, excitation: Tensor, io: _States) -> Tensor:
        """The source's STFT with ``torch.stft``'s reflect padding: samples 8..1 before the segment, the mirror
        of its end after it."""
        first, final = io.first, io.final
        stft = self.vocoder.stft
        pad = stft.n_fft // 2
        x = torch.cat([io.take(excitation[:, None]), excitation[:, None]], -1)
        before = x.index_select(-1, torch.arange(pad, pad - pad * first, -1))
        end = _length(x) - 2
        after = x.index_select(-1, torch.arange(end, end - pad * final, -1))
        buffer = torch.cat([before, x, after], -1)
        return self._valid(buffer, stft.n_fft, stft.hop, io, lambda b: F.conv1d(b, stft.basis, stride=stft.hop))

