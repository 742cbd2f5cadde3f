"""The whole torch reference model, each part at its official checkpoint key prefix (spec §13)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from bcaudio.config import ModelConfig
from bcaudio.export.audio_head import AudioHead
from bcaudio.export.bridge import AudioBridge
from bcaudio.export.detokenizer import AudioDetokenizer
from bcaudio.export.encoder import AudioEncoder
from bcaudio.export.flow_estimator import FlowEstimator
from bcaudio.export.flow_prenet import FlowPrenet
from bcaudio.export.llm import BaichuanLLM
from bcaudio.export.vocoder import HiFTVocoder

_FLOW = "audio_tokenizer.audio_flow_matching_decoder."

# part name -> (key prefix in the checkpoint, factory). The vocoder has a state dict of its own.
PARTS: dict[str, tuple[str, Callable[[ModelConfig], nn.Module]]] = {
    "llm": ("", lambda c: BaichuanLLM(c.llm, c.bridge.codebook_sizes, c.tokens)),
    "audio_head": ("audio_head.", AudioHead),
    "encoder": ("audio_tokenizer.audio_model.", AudioEncoder),
    "bridge": ("audio_tokenizer.audio_bridge_model.", AudioBridge),
    "detokenizer": ("audio_tokenizer.audio_decoder.", AudioDetokenizer),
    "prenet": (_FLOW + "prenet.", FlowPrenet),
    "estimator": (_FLOW + "conditional_decoder.", FlowEstimator),
    "vocoder": ("", lambda c: HiFTVocoder(c.vocoder)),
}
MAIN_PARTS = tuple(p for p in PARTS if p != "vocoder")

# Present in real checkpoints, unused at inference (spec §9, §15): skipped by name, never silently.
IGNORED_PREFIXES = (
    "audio_tokenizer.audio_decoder.dconv2.",
    "audio_tokenizer.audio_decoder.post_net.",
    "audio_tokenizer.audio_decoder.coarse_mel",
    _FLOW + "prenet.positional_embedding",  # registered by the published pre-net, never read
    "visual.",
    "video.",
)
# Training state of the RVQ's EMA codebooks (vq_list.{i}.codebook.*).
IGNORED_SUFFIXES = (".codebook.cluster_size", ".codebook.embed_avg")


def is_ignored(key: str) -> bool:
    """Keys a real checkpoint has that inference never reads: skipped by name, never silently."""
    return key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES)


def part_of(key: str) -> str:
    """The main part a checkpoint key belongs to (longest matching prefix; the LLM owns the rest)."""
    best = "llm"
    for name in MAIN_PARTS:
        prefix = PARTS[name][0]
        if prefix and key.startswith(prefix) and len(prefix) > len(PARTS[best][0]):
            best = name
    return best


def build_part(name: str, cfg: ModelConfig, device: str | torch.device = "cpu") -> nn.Module:
    with torch.device(device):
        return PARTS[name][1](cfg)


class Reference(nn.Module):
    """The loaded parts; only those asked for are built (exporting the LLM of a 7B model needs no vocoder)."""

    def __init__(self, cfg: ModelConfig, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.cfg = cfg
        self.parts = nn.ModuleDict(parts)

    def __getattr__(self, name: str) -> nn.Module:
        if name != "parts" and "parts" in self._modules and name in self._modules["parts"]:
            return self._modules["parts"][name]
        return super().__getattr__(name)

    def official_state_dict(self, names: Iterable[str] = MAIN_PARTS) -> dict[str, torch.Tensor]:
        """Keys as the checkpoint spells them, for the given main parts."""
        out = {}
        for name in names:
            prefix = PARTS[name][0]
            out.update({prefix + k: v for k, v in self.parts[name].state_dict().items()})
        return out
