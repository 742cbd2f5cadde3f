"""Deterministic random weights for a checkpoint, tensor by tensor.

Each tensor is drawn from its own generator seeded by (seed, key name), so a
tensor's value does not depend on shard layout, part selection or build order,
and a 7B-shaped checkpoint can be written one tensor at a time. Scales keep
activations of a deep random stack finite and non-degenerate; they are not meant
to sound like speech, with one exception: the vocoder's F0 predictor is made voiced (below), as
a trained one is on speech, so that the source's harmonic path is what every random vocoder runs.
"""

from __future__ import annotations

import zlib

import torch

from bcaudio.export.layers import sinusoids

_UNIT_SUFFIXES = (".alpha",)  # Snake activations: alpha = 1 is the identity-like start
# The F0 predictor's linear head. With the generic scale its output is 0-4 Hz, below the 10 Hz
# voicing threshold, so the source would be noise only; a centre of a speaking voice plus a gain
# on a zero-sum random direction (the ELU features share a positive mean, which a zero-sum head
# mostly ignores) makes f0 a speaking voice's, varying with the mel by a few Hz (tiny: 138-152 Hz
# on speech). The gain is small on purpose: the source integrates f0 into a phase, so the
# predictor's float rounding (onnxruntime vs torch) times the gain drifts the waveform; at gain 5
# both sides' f0 agree within one float32 step, at 60 they are 8 steps apart.
_F0_HEAD = "f0_predictor.classifier."
F0_CENTRE_HZ = 140.0
F0_GAIN_HZ = 5.0


def tensor_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF_FFFF


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The fp32 value of checkpoint tensor ``name``."""
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    if name.endswith("positional_embedding"):
        return sinusoids(shape[0], shape[1])
    if name == _F0_HEAD + "bias":
        return torch.full(shape, F0_CENTRE_HZ)
    if name.endswith(_UNIT_SUFFIXES) or name.endswith("weight_g"):
        return torch.ones(shape)
    if len(shape) == 1:
        if name.endswith(".weight"):  # every 1-D ".weight" is a norm gain (RMSNorm, LayerNorm, GroupNorm)
            return 1.0 + 0.02 * torch.randn(shape, generator=gen)
        return 0.02 * torch.randn(shape, generator=gen)
    if "codebook.embed" in name:
        return torch.randn(shape, generator=gen)
    if "embed_tokens" in name or "audio_embed_layers" in name:
        return 0.02 * torch.randn(shape, generator=gen)
    fan_in = 1
    for n in shape[1:]:
        fan_in *= n
    weight = torch.randn(shape, generator=gen) / fan_in**0.5
    if name == _F0_HEAD + "weight":
        return F0_GAIN_HZ * (weight - weight.mean())
    return weight
