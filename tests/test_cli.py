"""Every checkpoint and turn command end to end, through ``bcaudio.cli.main``, against its documented output.

(validate: test_export.py; quantize: test_quant.py; bench: test_bench.py; profile, profiles: test_profiler.py;
chat, devices: test_live.py.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bcaudio.cli import main
from bcaudio.demo import speak_question
from bcaudio.export.checkpoint import load_checkpoint
from bcaudio.export.reference_turn import reference_events
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.speech_loop import collect
from bcaudio.runtime.package.manifest import load_manifest
from bcaudio.runtime.package.text_codec import TextCodec

SPOKEN = "Good morning, here is the weather."


@pytest.fixture(scope="module")
def question(tiny_exported: tuple[Path, Path], speech_16k: np.ndarray) -> Path:
    path = tiny_exported[0].parent / "question.wav"
    sf.write(path, speech_16k, 16000)
    return path


def run(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    captured = capfd.readouterr()
    return code, captured.out + captured.err


def test_init_writes_the_official_layout_and_info_describes_it(tmp_path: Path,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "ckpt"
    code, out = run(["init", "--preset", "tiny", "--out", str(ckpt), "--seed", "2", "--shard-size-mb", "0.5"], capfd)
    assert code == 0
    names = {p.name for p in ckpt.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json"} <= names
    assert names & {"hift.safetensors", "hift.pt"} and any(n.startswith("model-0000") for n in names)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {n for n in names if n.startswith("model-0000")}
    code, info = run(["info", str(ckpt)], capfd)
    assert code == 0 and info in out  # init ends with the same summary
    cfg = load_checkpoint(ckpt, parts=["bridge"]).cfg
    assert f"checkpoint {ckpt}  (preset tiny)" in info
    assert f"hidden {cfg.llm.hidden_size}, {cfg.llm.layers} layers" in info
    assert f"eos {cfg.tokens.eos}, audio pad {cfg.tokens.audio_pad}" in info
    assert "parameters: llm " in info and f"files: {len(names)}," in info
    code, out = run(["info", str(tmp_path / "nothing")], capfd)
    assert code == 2 and "no such folder" in out and "Traceback" not in out


def test_generate_prints_the_reference_turn_and_writes_its_audio(tiny_exported: tuple[Path, Path], question: Path,
                                                                 speech_16k: np.ndarray, tmp_path: Path,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    ckpt, _ = tiny_exported
    wav = tmp_path / "answer.wav"
    code, out = run(["generate", "--checkpoint", str(ckpt), "--input", str(question), "--greedy",
                     "--output", str(wav)], capfd)
    assert code == 0
    ref = load_checkpoint(ckpt)
    want = collect(reference_events(ref, TextCodec(ckpt / "tokenizer.json"), "respond", speech_16k, None, 0, True), 240)
    assert out.startswith(want.text) and f"stop: {want.reason}]" in out
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == 24000 and np.abs(audio - want.waveform(240)).max() < 1e-4  # 16-bit PCM: half a step is 1.5e-5
    code, out = run(["generate", "--checkpoint", str(ckpt), "--mode", "tts"], capfd)
    assert code == 2 and "--mode tts needs --text" in out


def test_export_writes_the_asked_graphs_with_progress(tiny_exported: tuple[Path, Path], tmp_path: Path,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    ckpt, _ = tiny_exported
    pkg = tmp_path / "pkg"
    code, out = run(["export", "--checkpoint", str(ckpt), "--out", str(pkg), "--graphs", "audio_head,vocoder"],
                    capfd)
    assert code == 0
    manifest = load_manifest(pkg)  # sha256 of every file verified
    assert set(manifest.graphs) == {"audio_head", "vocoder"}
    assert "audio_head" in out and "vocoder" in out
    code, out = run(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x"), "--graphs", "llm,ears"],
                    capfd)
    assert code == 2 and "ears" in out and "Traceback" not in out


@pytest.fixture(scope="module")
def greedy_assistant(tiny_exported: tuple[Path, Path]):
    def make() -> VoiceAssistant:  # the package's own generation defaults, seed 0: what the commands run
        return VoiceAssistant(tiny_exported[1], None, log=lambda _: None)
    return make


def test_respond_prints_the_answer_and_writes_its_audio(tiny_exported: tuple[Path, Path], question: Path,
                                                        speech_16k: np.ndarray, greedy_assistant, tmp_path: Path,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "a.wav"
    code, out = run(["respond", "--model", str(tiny_exported[1]), "--input", str(question), "--output", str(wav)],
                    capfd)
    assert code == 0
    want = collect(greedy_assistant().respond(speech_16k, 16000), 240)
    assert out.startswith(want.text) and f"stop: {want.reason}]" in out
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == 24000 and audio.size == want.waveform(240).size
    assert np.abs(audio - want.waveform(240)).max() < 1e-4
    code, out = run(["respond", "--model", str(tiny_exported[1]), "--input", str(question), "--text-only",
                     "--json"], capfd)
    assert code == 0
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    text_only = collect(greedy_assistant().respond_text(speech_16k, 16000), 240)
    assert result["text_ids"] == text_only.text_ids and result["segments"] == []


def test_transcribe_prints_the_asr_text(tiny_exported: tuple[Path, Path], question: Path, speech_16k: np.ndarray,
                                        greedy_assistant, capfd: pytest.CaptureFixture[str]) -> None:
    code, out = run(["transcribe", "--model", str(tiny_exported[1]), "--input", str(question), "--json"], capfd)
    assert code == 0
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    want = collect(greedy_assistant().transcribe(speech_16k, 16000), 240)
    assert result["text_ids"] == want.text_ids and result["stop"] == want.reason and want.text_ids
    code, out = run(["transcribe", "--model", str(tiny_exported[1]), "--input", str(question.parent / "no.wav")],
                    capfd)
    assert code == 2 and "no.wav" in out and "Traceback" not in out


def test_speak_writes_the_spoken_text(tiny_exported: tuple[Path, Path], greedy_assistant, tmp_path: Path,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "s.wav"
    code, out = run(["speak", "--model", str(tiny_exported[1]), "--text", SPOKEN, "--output", str(wav)], capfd)
    assert code == 0
    want = collect(greedy_assistant().speak(SPOKEN), 240)
    assert out.startswith(want.text) and want.text.replace(" ", "") == SPOKEN.replace(" ", "")
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == 24000 and audio.size == want.waveform(240).size > 0
    assert np.abs(audio - want.waveform(240)).max() < 1e-4


def test_demo_answers_its_spoken_question(tiny_exported: tuple[Path, Path], tmp_path: Path,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    """On a workdir that already holds the checkpoint and package, as a second `make demo` finds it."""
    ckpt, pkg = tiny_exported
    shutil.copytree(ckpt, tmp_path / "tiny-checkpoint")
    shutil.copytree(pkg, tmp_path / "tiny-package")
    code, out = run(["demo", "--workdir", str(tmp_path)], capfd)
    assert code == 0
    assert "== 1/3" not in out and "== 2/3" not in out  # both were there: not made again
    assert "== 3/3 a voice turn on ONNX Runtime" in out and "answer: " in out and "stop: " in out
    audio, rate = sf.read(tmp_path / "reply.wav")
    question, qrate = sf.read(tmp_path / "question.wav")
    assert rate == 24000 and qrate == 16000 and audio.size > 0 and question.size > 16000
    again, _ = sf.read(speak_question(tmp_path / "again.wav"))  # undithered: every run hears the same question
    assert np.array_equal(question, again)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or ".22k" in p.name]  # no leftovers


def _commands(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from _commands(sub)


def test_every_command_has_a_description_and_every_option_help_and_its_default(
        capfd: pytest.CaptureFixture[str]) -> None:
    import argparse

    from bcaudio.cli import build_parser

    commands = dict(_commands(build_parser()))
    assert {"init", "info", "generate", "export", "validate", "demo", "respond", "transcribe", "speak", "quantize",
            "quantize-table", "bench", "profile", "compare", "profiles", "chat", "devices"} <= set(commands)
    undescribed, unhelped, hidden_defaults = [], [], []
    for name, parser in commands.items():
        undescribed += [] if parser.description else [name]
        text = "".join(parser.format_help().split())  # help lines wrap anywhere, hyphens included
        options = [a for a in parser._actions if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]
        unhelped += [f"{name} {a.dest}" for a in options if not a.help]
        hidden_defaults += [f"{name} {a.dest}" for a in options if a.option_strings and a.default is not None
                            and a.default is not False and "default" not in (a.help or "")
                            and "".join(f"{a.default}".split()) not in text]
    assert undescribed == [] and unhelped == [] and hidden_defaults == []
    assert main(["init", "--help"]) == 0  # --help is an answer, not an error
    assert "(default: 2048.0)" in capfd.readouterr().out
