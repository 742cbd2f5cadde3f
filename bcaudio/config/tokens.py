"""Special token ids of spec §6 and their texts."""

from __future__ import annotations

from dataclasses import dataclass

from bcaudio.config.base import check


@dataclass
class SpecialTokens:
    """Token ids of spec §6. The optional ones are read when a checkpoint declares them."""

    eos: int = 151643
    system: int = 151665
    user: int = 151667
    assistant: int = 151668
    audio_start: int = 151676
    audio_end: int = 151677
    audio_pad: int = 151678
    audiotext_start: int = 151697
    audiogen_start: int = 151700
    audiogen_end: int = 151701
    audio_delim: int | None = None
    audiotext_end: int | None = None
    audiotext_pad: int | None = None

    NAMES = {
        "eos": "<|endoftext|>",
        "system": "<B_SYS>",
        "user": "<C_Q>",
        "assistant": "<C_A>",
        "audio_start": "<audio_start_baichuan>",
        "audio_end": "<audio_end_baichuan>",
        "audio_pad": "<audio_pad_baichuan>",
        "audiotext_start": "<audiotext_start_baichuan>",
        "audiogen_start": "<audiogen_start_baichuan>",
        "audiogen_end": "<audiogen_end_baichuan>",
        "audio_delim": "<audio_delim_baichuan>",
        "audiotext_end": "<audiotext_end_baichuan>",
        "audiotext_pad": "<audiotext_pad_baichuan>",
    }

    def by_id(self) -> dict[int, str]:
        """Id -> token text for every declared special token."""
        return {getattr(self, k): v for k, v in self.NAMES.items() if getattr(self, k) is not None}

    def validate(self, vocab_size: int) -> None:
        ids = [getattr(self, k) for k in self.NAMES if getattr(self, k) is not None]
        check(len(set(ids)) == len(ids), "special_tokens: two special tokens share an id")
        check(max(ids) < vocab_size, f"special_tokens: id {max(ids)} >= vocab_size {vocab_size}")
