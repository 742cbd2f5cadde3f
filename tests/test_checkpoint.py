"""Checkpoint I/O: init writes the official layout, load reads it back bit for bit, bad keys fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bcaudio.config import ModelConfig
from bcaudio.export.checkpoint import (
    INDEX,
    SINGLE,
    CheckpointError,
    expected_shapes,
    finite,
    init_checkpoint,
    load_checkpoint,
)
from bcaudio.export.reference import PARTS
from bcaudio.presets import get_preset


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_checkpoint(get_preset("tiny"), tmp_path_factory.mktemp("ckpt") / "tiny", seed=3)


def _stored(ckpt: Path) -> dict[str, torch.Tensor]:
    out = {}
    files = [ckpt / SINGLE] if (ckpt / SINGLE).exists() else sorted(ckpt.glob("model-*.safetensors"))
    for path in files:
        with safe_open(str(path), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def test_official_layout_and_key_names(tiny_ckpt: Path) -> None:
    names = set(_stored(tiny_ckpt))
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.W_pack.weight",
                "model.layers.0.self_attn.W_pack.bias", "model.audio_embed_layers.7.weight", "lm_head.weight",
                "audio_head.transformer_layers.2.self_attention.in_proj_weight", "audio_head.heads.7.bias",
                "audio_head.transformer_layers.0.linear1.weight", "audio_tokenizer.audio_model.positional_embedding",
                "audio_tokenizer.audio_bridge_model.vq_list.0.codebook.embed",
                "audio_tokenizer.audio_decoder.dconv1.conv.weight",
                "audio_tokenizer.audio_flow_matching_decoder.prenet.in_mlp.0.weight",
                "audio_tokenizer.audio_flow_matching_decoder.conditional_decoder.time_mlp.linear_1.weight"):
        assert key in names, key
    hift = torch.load(tiny_ckpt / "hift.pt", weights_only=True)  # as published: fp32, weight-norm pairs
    assert "conv_pre.weight_g" in hift and "conv_pre.weight_v" in hift
    assert {v.dtype for v in hift.values()} == {torch.float32}
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
                 "special_tokens_map.json"):
        assert (tiny_ckpt / name).is_file(), name
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    assert cfg["attention_qkv_pack"] and cfg["audio_config"]["vq_config"]["codebook_sizes"][0] == 64


def test_init_then_load_round_trips_every_tensor_bit_exactly(tiny_ckpt: Path) -> None:
    ref = load_checkpoint(tiny_ckpt)
    stored = _stored(tiny_ckpt)
    loaded = ref.official_state_dict()
    assert set(loaded) == set(stored)
    for key, value in stored.items():
        assert torch.equal(loaded[key].to(value.dtype), value), key
        assert loaded[key].dtype == torch.float32  # bf16 weights, fp32 compute (spec §16)


def test_init_is_deterministic_and_seed_dependent(tmp_path: Path, tiny_ckpt: Path) -> None:
    again = _stored(init_checkpoint(get_preset("tiny"), tmp_path / "a", seed=3))
    other = _stored(init_checkpoint(get_preset("tiny"), tmp_path / "b", seed=4))
    first = _stored(tiny_ckpt)
    key = "model.layers.0.mlp.up_proj.weight"
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first[key], other[key])


def test_sharded_checkpoint_with_index_loads_the_same(tmp_path: Path, tiny_ckpt: Path) -> None:
    sharded = init_checkpoint(get_preset("tiny"), tmp_path / "sharded", seed=3, shard_bytes=200_000)
    index = json.loads((sharded / INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 2
    a = load_checkpoint(sharded, parts=["llm"]).official_state_dict(["llm"])
    b = load_checkpoint(tiny_ckpt, parts=["llm"]).official_state_dict(["llm"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def _rewrite(ckpt: Path, edit) -> None:
    tensors = _stored(ckpt)
    edit(tensors)
    save_file(tensors, str(ckpt / SINGLE))


@pytest.mark.parametrize("case,pattern", [
    ("missing", r"missing tensor model\.norm\.weight \(expected shape \[64\]\)"),
    ("unexpected", r"unexpected tensor model\.extra\.weight \[3\]"),
    ("misshaped", r"tensor lm_head\.weight has shape \[10, 64\], the config expects \[1024, 64\]"),
])
def test_bad_keys_fail_with_one_clear_line(tmp_path: Path, case: str, pattern: str) -> None:
    ckpt = init_checkpoint(get_preset("tiny"), tmp_path / case, seed=0)

    def edit(t: dict[str, torch.Tensor]) -> None:
        if case == "missing":
            del t["model.norm.weight"]
        elif case == "unexpected":
            t["model.extra.weight"] = torch.zeros(3)
        else:
            t["lm_head.weight"] = torch.zeros(10, 64)

    _rewrite(ckpt, edit)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(ckpt, parts=["llm"])
    assert "\n" not in str(info.value)


def test_known_unused_real_checkpoint_keys_are_skipped(tmp_path: Path) -> None:
    """Only the documented unused keys are skipped, by name: the bridge loads as it did without them, and a
    key of the same subtree that is not on the list still stops the load."""
    ckpt = init_checkpoint(get_preset("tiny"), tmp_path / "real", seed=0)
    before = load_checkpoint(ckpt, parts=["bridge"]).bridge.state_dict()

    def edit(t: dict[str, torch.Tensor]) -> None:
        t["audio_tokenizer.audio_decoder.dconv2.conv.weight"] = torch.zeros(2)
        t["audio_tokenizer.audio_bridge_model.vq_list.0.codebook.cluster_size"] = torch.zeros(64)

    _rewrite(ckpt, edit)
    after = load_checkpoint(ckpt, parts=["bridge"]).bridge.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    _rewrite(ckpt, lambda t: t.update({"audio_tokenizer.audio_decoder.dconv3.conv.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor audio_tokenizer\.audio_decoder\.dconv3"):
        load_checkpoint(ckpt)


def test_corrupt_config_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a folder"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "bad")


def test_7b_shapes_match_the_spec_for_kept_parts() -> None:
    cfg = get_preset("baichuan-audio-7b", layers=1)
    llm = expected_shapes(cfg, "llm")
    assert llm["model.layers.0.self_attn.W_pack.weight"] == (4608, 3584)
    assert llm["model.embed_tokens.weight"] == (152064, 3584)
    assert llm["model.audio_embed_layers.0.weight"] == (8193, 3584)
    head = expected_shapes(cfg, "audio_head")
    assert head["audio_head.transformer_layers.0.linear1.weight"] == (7168, 28672)
    assert head["audio_head.transformer_layers.0.linear2.weight"] == (3584, 57344)
    assert head["audio_head.heads.0.weight"] == (8193, 3584) and head["audio_head.heads.1.weight"] == (4097, 3584)
    enc = expected_shapes(cfg, "encoder")
    assert enc["audio_tokenizer.audio_model.positional_embedding"] == (1500, 1280)
    assert enc["audio_tokenizer.audio_model.conv1.weight"] == (1280, 128, 3)
    bridge = expected_shapes(cfg, "bridge")
    assert bridge["audio_tokenizer.audio_bridge_model.vq_list.0.codebook.embed"] == (8192, 5120)
    assert bridge["audio_tokenizer.audio_bridge_model.gate_proj.weight"] == (5120, 1280, 4)
    sizes = {p: sum(torch.Size(s).numel() for s in expected_shapes(ModelConfig(), p).values()) for p in PARTS}
    assert 7.4e9 < sizes["llm"] < 7.8e9 and 1.3e9 < sizes["audio_head"] < 1.6e9  # spec §13: 7.6 B, 1.46 B


def test_cut_vocabulary_keeps_the_special_tokens_at_its_top() -> None:
    """``get_preset(vocab=...)``: the 7B widths with a small vocabulary (tests of per-layer cost) keep the real
    token scheme: every special id at the same distance from the top, inside the vocabulary."""
    from bcaudio.config import ConfigError, SpecialTokens

    real, cut = get_preset("baichuan-audio-7b"), get_preset("baichuan-audio-7b", layers=2, vocab=8192)
    assert cut.llm.vocab_size == 8192 and cut.llm.hidden_size == real.llm.hidden_size and cut.llm.layers == 2
    for name in SpecialTokens.NAMES:
        if getattr(real.tokens, name) is not None:
            assert real.llm.vocab_size - getattr(real.tokens, name) == 8192 - getattr(cut.tokens, name), name
    with pytest.raises(ConfigError, match="special tokens"):
        get_preset("baichuan-audio-7b", vocab=32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_non_finite_weights_are_refused_in_every_float_dtype(dtype: torch.dtype, bad: float | None) -> None:
    """``finite`` agrees with ``torch.isfinite`` on each checkpoint dtype: one NaN or infinity anywhere (here in a
    transposed, non-contiguous view, next to the largest finite values and subnormals) is refused by name."""
    info = torch.finfo(dtype)
    t = torch.randn(64, 48).to(dtype)
    t[3, 5], t[7, 1], t[9, 9] = info.max, -info.max, info.tiny / 4
    if bad is not None:
        t[60, 40] = bad
    view = t.T
    assert bool(torch.isfinite(view).all()) == (bad is None)
    if bad is None:
        assert finite("w", view, Path("model.safetensors")) is view
    else:
        with pytest.raises(CheckpointError, match="tensor w has 1 NaN or infinite value"):
            finite("w", view, Path("model.safetensors"))
