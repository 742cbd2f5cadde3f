"""Deterministic random weights for a checkpoint, tensor by tensor.

Each tensor is drawn from its own generator seeded by (seed, key name), so a
tensor's value does not depend on shard layout, part selection or build order,
and a 7B-shaped checkpoint can be written one tensor at a time. Scales keep
activations of a deep random stack finite and non-degenerate; they are not meant
to sound like speech.
"""

from __future__ import annotations

import zlib

import torch

from bcaudio.export.layers import sinusoids

_UNIT_SUFFIXES = (".alpha",)  # Snake activations: alpha = 1 is the identity-like start


def tensor_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF_FFFF


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The fp32 value of checkpoint tensor ``name``."""
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    if name.endswith("positional_embedding"):
        return sinusoids(shape[0], shape[1])
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
    return torch.randn(shape, generator=gen) / fan_in**0.5
