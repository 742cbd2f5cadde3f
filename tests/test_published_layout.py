"""The checkpoint folder as a user downloads it (spec §17): sharded safetensors + index, the Qwen2 tokenizer
files, the vocoder as a separate fp32 hift.pt; sizes derived as the published code derives them; `bcaudio info`
from the headers, on a checkpoint and on a package."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from bcaudio.cli import main
from bcaudio.export.checkpoint import CONFIG, INDEX, init_checkpoint, load_checkpoint, load_config
from bcaudio.export.package import export_package
from bcaudio.export.text_tokenizer import CORPUS
from bcaudio.export.tokenizer_files import convert_vocab_merges
from bcaudio.presets import get_preset
from bcaudio.runtime.package.manifest import load_manifest

QUIET = lambda _: None  # noqa: E731


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny, sharded like the real repositories (several shards and an index)."""
    return init_checkpoint(get_preset("tiny"), tmp_path_factory.mktemp("published") / "ckpt", seed=5,
                           shard_bytes=1 << 20)


def test_published_file_set(published: Path) -> None:
    names = {p.name for p in published.iterdir()}
    assert {"config.json", "generation_config.json", INDEX, "hift.pt", "tokenizer.json", "tokenizer_config.json",
            "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"} <= names
    shards = sorted(n for n in names if n.endswith(".safetensors"))
    assert len(shards) > 1 and all(n.startswith("model-") and n.endswith(f"-of-{len(shards):05d}.safetensors")
                                   for n in shards)
    assert set(json.loads((published / INDEX).read_text())["weight_map"].values()) == set(shards)
    hift = torch.load(published / "hift.pt", weights_only=True)
    assert {v.dtype for v in hift.values()} == {torch.float32}
    assert sum(1 for k in hift if k.endswith("weight_g")) == sum(1 for k in hift if k.endswith("weight_v")) > 0
    assert json.loads((published / "tokenizer_config.json").read_text())["tokenizer_class"] == "Qwen2Tokenizer"


def test_published_layout_loads_and_exports(published: Path, tmp_path: Path) -> None:
    ref = load_checkpoint(published, parts=["llm", "vocoder"])
    assert set(ref.parts) == {"llm", "vocoder"}
    manifest = export_package(published, tmp_path / "pkg", graphs=["llm", "vocoder"], progress=QUIET)
    assert load_manifest(tmp_path / "pkg").tokenizer == manifest.tokenizer


def test_vocab_and_merges_only_folder_converts_to_the_same_tokenizer(published: Path, tmp_path: Path) -> None:
    folder = tmp_path / "slow"
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(published / name, folder / name)
    cfg = load_config(published)
    fast = Tokenizer.from_file(str(published / "tokenizer.json"))
    for added in (True, False):  # with added_tokens.json, and with nothing but the two files
        if added:
            shutil.copyfile(published / "added_tokens.json", folder / "added_tokens.json")
        converted = convert_vocab_merges(folder, cfg)
        text = CORPUS + "<|endoftext|> <audio_start_baichuan> 12:45 ok"
        assert converted.encode(text).ids == fast.encode(text).ids
        assert converted.decode(fast.encode(text).ids, skip_special_tokens=False) == text
        (folder / "added_tokens.json").unlink(missing_ok=True)
    # and the export takes such a folder: the package gets the converted tokenizer.json
    ckpt = Path(shutil.copytree(published, tmp_path / "ckpt"))
    (ckpt / "tokenizer.json").unlink()
    export_package(ckpt, tmp_path / "pkg", graphs=["vocoder"], progress=QUIET)
    assert Tokenizer.from_file(str(tmp_path / "pkg" / "tokenizer.json")).encode(CORPUS).ids == fast.encode(CORPUS).ids


def test_sizes_come_from_the_checkpoint_not_a_bcaudio_section(tmp_path: Path) -> None:
    """A reduced 7B checkpoint's config.json without the bcaudio section loads to the same shapes: the pre-net
    hidden width is 4 x prenet_d_model, the HiFT widths are read from hift.pt."""
    cfg = get_preset("baichuan-audio-7b", layers=1)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    cfg.save(ckpt / CONFIG)
    raw = json.loads((ckpt / CONFIG).read_text())
    raw.pop("bcaudio")
    (ckpt / CONFIG).write_text(json.dumps(raw))
    loaded = load_config(ckpt)
    assert loaded.flow.prenet_hidden_dim == 4 * loaded.flow.prenet_d_model == cfg.flow.prenet_hidden_dim
    assert (loaded.encoder, loaded.llm, loaded.audio_head, loaded.flow) == (cfg.encoder, cfg.llm, cfg.audio_head,
                                                                              cfg.flow)
    # tiny's vocoder is narrower than HiFT's constructor defaults; its widths come from the state dict
    tiny = get_preset("tiny")
    torch.save({"conv_pre.weight_v": torch.zeros(tiny.vocoder.base_channels, 80, 7),
                "f0_predictor.condnet.0.weight_v": torch.zeros(tiny.vocoder.f0_channels, 80, 3)}, ckpt / "hift.pt")
    widths = load_config(ckpt).vocoder
    assert (widths.base_channels, widths.f0_channels) == (tiny.vocoder.base_channels, tiny.vocoder.f0_channels)


def test_info_reports_what_is_stored(published: Path, tmp_path: Path, capsys) -> None:
    assert main(["info", str(published)]) == 0
    out = capsys.readouterr().out
    assert "matches config.json: yes" in out and "BF16" in out and "hift.pt" in out
    # a config that predicts more layers than are stored: info shows the stored count and the disagreement
    ckpt = Path(shutil.copytree(published, tmp_path / "ckpt"))
    raw = json.loads((ckpt / CONFIG).read_text())
    raw["num_hidden_layers"] = 3
    (ckpt / CONFIG).write_text(json.dumps(raw))
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "2 layers" in out and "matches config.json: no" in out and "missing:" in out
    export_package(published, tmp_path / "pkg", graphs=["llm"], recipe="int4", progress=QUIET)
    assert main(["info", str(tmp_path / "pkg")]) == 0
    out = capsys.readouterr().out
    assert "recipe int4" in out and "llm: int4" in out
