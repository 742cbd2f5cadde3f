"""The generated text tokenizer has the real layout: special tokens at the config's ids, lossless, deterministic."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from bcaudio.config import ConfigError, ModelConfig, SpecialTokens
from bcaudio.export.text_tokenizer import (
    CORPUS,
    TOKENIZER_FILE,
    build_text_tokenizer,
    save_text_tokenizer,
)
from bcaudio.presets import get_preset

TEXTS = [
    "Hello, this is a test of the voice assistant. What is the weather like today?",
    "将语音转录为文本:",
    "你好，今天天气怎么样？明天下午会下雨！记得带伞。",
    "Mixed 中英文 text, with emoji 🎉👍🏽 and a flag 🇨🇳!\nNew line,\ttab   spaces… “quotes” — done?",
    "Numbers 3.14159 and 2024年10月1日, café naïve, Ünïcödé.",
    "",
]


@pytest.fixture(scope="module", params=["tiny", "small"])
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelConfig, Path]:
    cfg = get_preset(request.param)
    out = tmp_path_factory.mktemp(request.param)
    save_text_tokenizer(cfg, out)
    return cfg, out


def _reload(out: Path) -> Tokenizer:
    return Tokenizer.from_file(str(out / TOKENIZER_FILE))


def test_special_tokens_at_config_ids(saved: tuple[ModelConfig, Path]) -> None:
    cfg, out = saved
    tok = _reload(out)
    assert tok.get_vocab_size() == cfg.llm.vocab_size
    for name, text in SpecialTokens.NAMES.items():
        if getattr(cfg.tokens, name) is not None:
            assert tok.token_to_id(text) == getattr(cfg.tokens, name), name
    added = tok.get_added_tokens_decoder()
    assert sorted(added) == list(range(cfg.tokens.eos, cfg.llm.vocab_size))
    assert all(t.special for t in added.values())
    assert tok.get_vocab_size(with_added_tokens=False) == cfg.tokens.eos


def test_round_trip(saved: tuple[ModelConfig, Path]) -> None:
    cfg, out = saved
    tok = _reload(out)
    for text in [*TEXTS, CORPUS]:
        ids = tok.encode(text).ids
        assert all(i < cfg.tokens.eos for i in ids), "plain text produced a special id"
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_inside_text(saved: tuple[ModelConfig, Path]) -> None:
    cfg, out = saved
    tok, t, names = _reload(out), cfg.tokens, SpecialTokens.NAMES
    prompt = (f"{names['system']}You are a helpful voice assistant.{names['user']}{names['audio_start']}"
              f"{names['audio_pad'] * 3}{names['audio_end']}{names['audiotext_start']}{names['assistant']}"
              f"你好！{names['audiogen_start']}{names['audiogen_end']}{names['eos']}")
    ids = tok.encode(prompt).ids
    system_text = tok.encode("You are a helpful voice assistant.").ids
    reply = tok.encode("你好！").ids
    assert ids == [t.system, *system_text, t.user, t.audio_start, t.audio_pad, t.audio_pad, t.audio_pad, t.audio_end,
                   t.audiotext_start, t.assistant, *reply, t.audiogen_start, t.audiogen_end, t.eos]
    assert tok.decode(ids, skip_special_tokens=False) == prompt
    assert tok.decode(ids) == "You are a helpful voice assistant.你好！"


def test_padding_tokens_are_unreachable(saved: tuple[ModelConfig, Path]) -> None:
    cfg, out = saved
    tok = _reload(out)
    reserved = f"<|reserved_{cfg.tokens.eos + 1}|>"
    assert tok.encode(reserved).ids == [cfg.tokens.eos + 1]
    filler = tok.id_to_token(cfg.tokens.eos - 1)
    if filler.startswith("<|bpe_filler_"):  # a corpus too small for the vocabulary: the gap is padded
        assert tok.encode(filler).ids != [cfg.tokens.eos - 1]


def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    cfg = get_preset("small")
    a = save_text_tokenizer(cfg, tmp_path / "a").read_bytes()
    b = save_text_tokenizer(cfg, tmp_path / "b").read_bytes()
    assert a == b


def test_transformers_loads_and_agrees(saved: tuple[ModelConfig, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    cfg, out = saved
    hf = transformers.AutoTokenizer.from_pretrained(out)
    tok = _reload(out)
    assert len(hf) == cfg.llm.vocab_size
    assert hf.eos_token_id == cfg.tokens.eos and hf.pad_token_id == cfg.tokens.eos
    assert hf.convert_tokens_to_ids(SpecialTokens.NAMES["audio_pad"]) == cfg.tokens.audio_pad
    names = SpecialTokens.NAMES
    for text in [*TEXTS, f"{names['user']}{TEXTS[0]}{names['assistant']}{TEXTS[2]}{names['eos']}"]:
        ids = hf(text)["input_ids"]
        assert ids == tok.encode(text).ids
        assert hf.decode(ids) == tok.decode(ids, skip_special_tokens=False)


def test_impossible_layouts_are_config_errors() -> None:
    cfg = get_preset("tiny")
    with pytest.raises(ConfigError, match="byte-level"):
        build_text_tokenizer(dataclasses.replace(cfg, tokens=dataclasses.replace(cfg.tokens, eos=100)))
    with pytest.raises(ConfigError, match="below eos"):
        build_text_tokenizer(dataclasses.replace(cfg, tokens=dataclasses.replace(cfg.tokens, eos=990)))
