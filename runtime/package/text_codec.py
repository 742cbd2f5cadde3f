"""The text tokenizer of a package, through the `tokenizers` library (no transformers on the edge box)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer


class TextCodec:
    def __init__(self, path: Path) -> None:
        self.tokenizer = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``; by default without special or reserved tokens (what a user should read), with
        ``skip_special=False`` as the published demo decodes (its stop strings and history see them)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special)
