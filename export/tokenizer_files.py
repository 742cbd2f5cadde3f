"""The Qwen2 tokenizer files as the checkpoint repositories publish them, and the package's tokenizer.json.

A published folder holds ``tokenizer.json`` with ``tokenizer_config.json``, ``vocab.json``,
``merges.txt``, ``added_tokens.json`` and ``special_tokens_map.json`` (spec §17). The runtime reads
one ``tokenizer.json``; a folder with only the slow tokenizer's ``vocab.json`` + ``merges.txt``
(as some mirrors and older snapshots have) is converted with the ``tokenizers`` library: Qwen2's
byte-level BPE pipeline over those merges, the added tokens from ``added_tokens.json`` or
``tokenizer_config.json`` where present, else the config's special tokens at their ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models

from bcaudio.config import ConfigError, ModelConfig
from bcaudio.export.text_tokenizer import (
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    added_tokens,
    build_text_tokenizer,
    qwen2_pipeline,
    tokenizer_config,
)

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
ADDED_TOKENS_FILE = "added_tokens.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
PUBLISHED_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, VOCAB_FILE, MERGES_FILE, ADDED_TOKENS_FILE,
                   SPECIAL_TOKENS_FILE)


def _write(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".partial")
    temp.write_text(text, encoding="utf-8")
    temp.replace(path)


def save_published_tokenizer(cfg: ModelConfig, out: Path) -> list[Path]:
    """Write the published file set for ``cfg``'s tokenizer into ``out``; -> the files."""
    tok = build_text_tokenizer(cfg)
    model = json.loads(tok.to_str())["model"]
    added = {text: i for i, text in added_tokens(cfg)}
    declared = cfg.tokens.by_id()
    eos = declared[cfg.tokens.eos]
    special_map = {"eos_token": eos, "pad_token": eos,
                   "additional_special_tokens": [declared[i] for i in sorted(declared) if i != cfg.tokens.eos]}
    merges = ["#version: 0.2", *(" ".join(m) if isinstance(m, list) else m for m in model["merges"])]
    files = {
        TOKENIZER_FILE: tok.to_str(pretty=True),
        TOKENIZER_CONFIG_FILE: json.dumps(tokenizer_config(cfg), indent=2, ensure_ascii=False) + "\n",
        VOCAB_FILE: json.dumps(model["vocab"], ensure_ascii=False),
        MERGES_FILE: "\n".join(merges) + "\n",
        ADDED_TOKENS_FILE: json.dumps(added, indent=2, ensure_ascii=False) + "\n",
        SPECIAL_TOKENS_FILE: json.dumps(special_map, indent=2, ensure_ascii=False) + "\n",
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        _write(out / name, text)
    return [out / name for name in files]


def _added_from_files(folder: Path, cfg: ModelConfig) -> list[tuple[int, str]]:
    """(id, text) of the added tokens: added_tokens.json, else tokenizer_config.json, else the config's."""
    if (folder / ADDED_TOKENS_FILE).is_file():
        raw = json.loads((folder / ADDED_TOKENS_FILE).read_text(encoding="utf-8"))
        return sorted((int(i), str(t)) for t, i in raw.items())
    if (folder / TOKENIZER_CONFIG_FILE).is_file():
        decoder = json.loads((folder / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8")).get("added_tokens_decoder")
        if decoder:
            return sorted((int(i), str(v["content"])) for i, v in decoder.items())
    return added_tokens(cfg)


def convert_vocab_merges(folder: Path, cfg: ModelConfig) -> Tokenizer:
    """A fast tokenizer from the slow tokenizer's vocab.json + merges.txt, laid out as Qwen2's tokenizer.json."""
    try:
        vocab = json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
        lines = (folder / MERGES_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{folder}: cannot read {VOCAB_FILE} / {MERGES_FILE} ({exc}); re-download them") from None
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    bad = next((m for m in merges if len(m) != 2), None)
    if bad is not None:
        raise ConfigError(f"{folder / MERGES_FILE}: line {' '.join(bad)!r} is not a merge of two symbols; "
                          "re-download it")
    tok = qwen2_pipeline(Tokenizer(models.BPE(vocab, merges, unk_token=None, fuse_unk=False, byte_fallback=False)))
    added = _added_from_files(folder, cfg)
    tok.add_special_tokens([AddedToken(text, special=True, normalized=False) for _, text in added])
    wrong = [(i, text) for i, text in added if tok.token_to_id(text) != i]
    if wrong:
        raise ConfigError(f"{folder}: added token {wrong[0][1]!r} lands at id {tok.token_to_id(wrong[0][1])}, not "
                          f"{wrong[0][0]}; {VOCAB_FILE} must end right below the first added token's id")
    return tok


def tokenizer_source(folder: Path) -> str:
    """Which files the package's tokenizer comes from; one line naming the fix when neither set is there."""
    if (folder / TOKENIZER_FILE).is_file():
        return TOKENIZER_FILE
    if (folder / VOCAB_FILE).is_file() and (folder / MERGES_FILE).is_file():
        return f"{VOCAB_FILE} + {MERGES_FILE}"
    raise ConfigError(f"{folder}: no text tokenizer ({TOKENIZER_FILE}, or {VOCAB_FILE} + {MERGES_FILE}); "
                      "download the tokenizer files of the model repository into the checkpoint folder")


def write_package_tokenizer(folder: Path, cfg: ModelConfig, out: Path) -> list[str]:
    """tokenizer.json (copied or converted) and tokenizer_config.json when there is one, into the package;
    -> the file names written."""
    if tokenizer_source(folder) == TOKENIZER_FILE:
        _write(out / TOKENIZER_FILE, (folder / TOKENIZER_FILE).read_text(encoding="utf-8"))
    else:
        _write(out / TOKENIZER_FILE, convert_vocab_merges(folder, cfg).to_str(pretty=True))
    names = [TOKENIZER_FILE]
    if (folder / TOKENIZER_CONFIG_FILE).is_file():
        _write(out / TOKENIZER_CONFIG_FILE, (folder / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8"))
        names.append(TOKENIZER_CONFIG_FILE)
    return names
