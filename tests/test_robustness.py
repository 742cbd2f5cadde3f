"""Bad input and faults, as a table: every case must end with exit code 2 and one line on stderr that names the
problem and the fix, no traceback, no partial output, and the previous output left as it was.

The corpus covers each class of issue 15: unreadable, truncated, wrong format, non-finite, too long, empty or
too short input; out-of-range options; bad output paths; partial and corrupt packages and checkpoints; a full
disk (a small tmpfs when the test may mount one, else a simulated ENOSPC); writers killed mid-write; missing
extras; broken pipes.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bcaudio.cli import main
from bcaudio.export.package import export_package
from bcaudio.runtime.package.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
PREVIOUS = b"previous output: must survive a failed run"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(folder: Path) -> list[str]:
    """Temporary names of bcaudio's writers (files or staging folders) in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".bcaudio-tmp-" in p.name or ".bcaudio-old-" in p.name)


def noise(seconds: float, rate: int = 16000, level: float = 0.1) -> np.ndarray:
    return (level * np.random.default_rng(0).standard_normal(int(seconds * rate))).astype(np.float32)


@dataclass
class World:
    root: Path
    ckpt: Path
    pkg: Path
    files: dict[str, Path]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, speech_16k: np.ndarray,
          tiny_exported: tuple[Path, Path]) -> World:
    root = tmp_path_factory.mktemp("robust")
    ckpt, pkg = root / "ckpt", root / "pkg"  # copies: the overlap cases need the checkpoint inside root
    shutil.copytree(tiny_exported[0], ckpt)
    shutil.copytree(tiny_exported[1], pkg)
    f: dict[str, Path] = {"ckpt": ckpt, "pkg": pkg, "root": root}
    c = root / "corpus"
    c.mkdir()
    sf.write(c / "speech.wav", speech_16k, 16000, subtype="PCM_16")
    f["speech"] = c / "speech.wav"
    nan = speech_16k.copy()
    nan[1000:1010] = np.nan
    sf.write(c / "nan.wav", nan, 16000, subtype="FLOAT")
    f["nan"] = c / "nan.wav"
    sf.write(c / "long.wav", noise(660), 16000, subtype="PCM_16")  # 11 minutes: 8250 codes
    f["long"] = c / "long.wav"
    (c / "empty.wav").write_bytes(b"")
    f["empty"] = c / "empty.wav"
    sf.write(c / "noframes.wav", np.zeros(0, np.float32), 16000, subtype="PCM_16")
    f["noframes"] = c / "noframes.wav"
    sf.write(c / "short.wav", noise(0.02), 16000, subtype="PCM_16")
    f["short"] = c / "short.wav"
    sf.write(c / "silent.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    f["silent"] = c / "silent.wav"
    (c / "garbage.wav").write_bytes(np.random.default_rng(1).bytes(4096))
    f["garbage"] = c / "garbage.wav"
    (c / "text.wav").write_text("this is not audio\n")
    f["text"] = c / "text.wav"
    whole = (c / "speech.wav").read_bytes()
    (c / "truncated.wav").write_bytes(whole[:len(whole) // 2])
    f["truncated"] = c / "truncated.wav"
    (c / "folder.wav").mkdir()
    f["folder"] = c / "folder.wav"
    # packages: only the llm graph; a graph file missing; a corrupt manifest; a modified graph
    f["pkg_llm"] = root / "pkg-llm"
    export_package(ckpt, f["pkg_llm"], graphs=["llm"], progress=lambda _: None)
    for name in ("pkg_missing", "pkg_manifest", "pkg_sha"):
        shutil.copytree(pkg, root / name)
        f[name] = root / name
    (f["pkg_missing"] / "vocoder.onnx").unlink()
    (f["pkg_manifest"] / "manifest.json").write_text('{"format_version": 2, "graphs": ')
    data = bytearray((f["pkg_sha"] / "flow_prenet.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (f["pkg_sha"] / "flow_prenet.onnx").write_bytes(bytes(data))
    # checkpoints: a truncated shard, a NaN weight, a corrupt config.json
    for name in ("ckpt_truncated", "ckpt_nan", "ckpt_config"):
        shutil.copytree(ckpt, root / name)
        f[name] = root / name
    shard = f["ckpt_truncated"] / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(f["ckpt_nan"] / "model.safetensors"))
    key = sorted(k for k in tensors if k.startswith("model.layers.0.mlp"))[0]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(f["ckpt_nan"] / "model.safetensors"), metadata={"format": "pt"})
    f["nan_key"] = Path(key)
    (f["ckpt_config"] / "config.json").write_text("{ not json")
    profile = (REPO / "device_profiles" / "cpu-2core.toml").read_text()
    (c / "threads.toml").write_text(profile.replace("intra_op_threads = 2", "intra_op_threads = 9999"))
    f["threads_profile"] = c / "threads.toml"
    inf = speech_16k.copy()
    inf[500] = np.inf
    sf.write(c / "inf.wav", inf, 16000, subtype="FLOAT")
    f["inf"] = c / "inf.wav"
    (c / "latin1.json").write_bytes(b'{"schema": "\xff\xfe"}')
    f["latin1"] = c / "latin1.json"
    (c / "garbage.toml").write_text("this is = = not toml\n")
    f["garbage_toml"] = c / "garbage.toml"
    (c / "steps.toml").write_text(profile.replace("flow_steps = ", "flow_steps = -3 #"))
    f["steps_profile"] = c / "steps.toml"
    # output places: a previous answer to keep, a read-only one, a missing folder, a file where a folder should be
    out = root / "out"
    out.mkdir()
    (out / "answer.wav").write_bytes(PREVIOUS)
    (out / "readonly.wav").write_bytes(PREVIOUS)
    (out / "readonly.wav").chmod(0o444)
    f["readonly"] = out / "readonly.wav"
    f["out"] = out
    f["answer"] = out / "answer.wav"
    f["nofolder"] = root / "no-such-folder" / "answer.wav"
    f["underfile"] = c / "speech.wav" / "answer.wav"
    return World(root, ckpt, pkg, f)


# (id, command line, what the line must name: the problem, the fix)
CASES = [
    # unreadable / wrong format / truncated / empty / too short / non-finite / too long audio, in every reader
    ("respond-missing-file", "respond --model {pkg} --input {root}/nope.wav", "no such file", "nope.wav"),
    ("respond-folder-as-input", "respond --model {pkg} --input {folder}", "is a folder", "give a file"),
    ("respond-garbage", "respond --model {pkg} --input {garbage}", "unreadable", "convert it to WAV"),
    ("respond-text-file", "respond --model {pkg} --input {text}", "unreadable", "convert it to WAV"),
    ("respond-truncated-wav", "respond --model {pkg} --input {truncated}", "truncated", "copy or record it again"),
    ("respond-empty-file", "respond --model {pkg} --input {empty}", "empty", "WAV or FLAC"),
    ("respond-no-frames", "respond --model {pkg} --input {noframes}", "empty audio", "record or pass"),
    ("respond-too-short", "respond --model {pkg} --input {short}", "shorter than one audio token", "speak"),
    ("respond-silent", "respond --model {pkg} --input {silent}", "silent", "check the microphone"),
    ("respond-nan", "respond --model {pkg} --input {nan}", "NaN", "check the recording"),
    ("transcribe-nan", "transcribe --model {pkg} --input {nan}", "NaN", "check the recording"),
    ("chat-file-nan", "chat --model {pkg} --device-profile cpu-2core --input-wav {nan}", "NaN",
     "check the recording"),
    ("chat-file-garbage", "chat --model {pkg} --device-profile cpu-2core --input-wav {garbage}", "unreadable",
     "convert it"),
    ("profile-nan", "profile --model {pkg} --device-profile cpu-2core --input {nan} --output {out}/p.json",
     "NaN", "check the recording"),
    ("validate-truncated-speech", "validate {pkg} --checkpoint {ckpt} --speech {truncated}", "truncated",
     "record it again"),
    ("respond-too-long", "respond --model {pkg} --input {long}", "needs 8", "split the recording"),
    ("generate-nan", "generate --checkpoint {ckpt} --input {nan}", "NaN", "check the recording"),
    # out-of-range options: refused where parsed, before any model is loaded
    ("threads-9999", "respond --model {pkg} --input {speech} --threads 9999", "out of range", "use 0"),
    ("threads-in-profile", "respond --model {pkg} --input {speech} --device-profile {threads_profile}",
     "intra_op_threads 9999 is out of range", "use 0"),
    ("threads-negative", "respond --model {pkg} --input {speech} --threads -1", "out of range", "use 0"),
    ("seed-negative", "respond --model {pkg} --input {speech} --seed -5", "not a valid seed", ">= 0"),
    ("seed-text", "speak --model {pkg} --text hi --seed x", "not a whole number", "seed"),
    ("stream-chunk-negative", "respond --model {pkg} --input {speech} --stream-chunk-frames -1", "out of range",
     "0..1000"),
    ("vad-threshold-above-1", "chat --model {pkg} --vad-threshold 1.5", "out of range", "(0, 1)"),
    ("vad-threshold-0", "chat --model {pkg} --vad-threshold 0", "out of range", "every or no frame"),
    ("vad-threshold-nan", "chat --model {pkg} --vad-threshold nan", "not a finite number", "must be in (0, 1)"),
    ("start-ms-negative", "chat --model {pkg} --start-ms -1", "out of range", "0..10000"),
    ("left-context-negative", "chat --model {pkg} --tokenize-left-context-ms -640", "out of range", "0..30000"),
    ("profile-turns-0", "profile --model {pkg} --turns 0", "out of range", "1..1000"),
    ("bench-huge-array", "bench --preset tiny --workdir {root}/bw --bandwidth-mb 100000000", "MB",
     "use at most"),
    ("bench-contexts", "bench --preset tiny --workdir {root}/bw --contexts 4,128", "out of range", "8..32768"),
    ("bench-variant", "bench --preset tiny --workdir {root}/bw --variants bcaudio-int3", "unknown bcaudio-int3",
     "choose from"),
    ("export-graph-name", "export --checkpoint {ckpt} --out {root}/x --graphs llm,vocodr", "unknown vocodr",
     "choose from"),
    ("export-opset", "export --checkpoint {ckpt} --out {root}/x --opset 5", "out of range", "17..21"),
    ("init-layers-0", "init --preset tiny --out {root}/x --layers 0", "out of range", ">= 1"),
    ("init-preset", "init --preset huge --out {root}/x", "invalid choice", "choose from"),
    # bad output paths: refused before any model is loaded, the previous output untouched
    ("output-missing-folder", "respond --model {pkg} --input {speech} --output {nofolder}", "does not exist",
     "create it first"),
    ("output-under-a-file", "respond --model {pkg} --input {speech} --output {underfile}", "does not exist",
     "create it first"),
    ("output-extension", "respond --model {pkg} --input {speech} --output {out}/answer.mp3", "cannot write .mp3",
     "use .wav or .flac"),
    ("output-is-folder", "speak --model {pkg} --text hello --output {out}", "is a folder", "give a file name"),
    ("text-only-with-output", "respond --model {pkg} --input {speech} --text-only --output {answer}",
     "--text-only answers in text", "drop --output"),
    ("profile-output-extension", "profile --model {pkg} --output {out}/report.txt", "cannot write .txt",
     "use .json"),
    ("chat-transcript-folder", "chat --model {pkg} --transcript {nofolder}.jsonl", "does not exist",
     "create it first"),
    ("export-onto-existing", "export --checkpoint {ckpt} --out {pkg_llm}", "exists", "pass --overwrite"),
    ("export-into-checkpoint", "export --checkpoint {ckpt} --out {ckpt}", "overlaps the checkpoint",
     "choose a folder outside it"),
    ("export-over-parent-of-checkpoint", "export --checkpoint {ckpt} --out {root} --overwrite",
     "overlaps the checkpoint", "choose a folder outside it"),
    ("quantize-onto-source", "quantize {pkg} --recipe int4 --out {pkg}", "overlaps the source package",
     "choose a folder outside it"),
    ("quantize-onto-existing", "quantize {pkg} --recipe int4 --out {pkg_llm}", "exists", "pass --overwrite"),
    ("init-onto-existing", "init --preset tiny --out {ckpt}", "exists", "pass --overwrite"),
    # partial and corrupt packages
    ("respond-llm-only-package", "respond --model {pkg_llm} --input {speech}", "lacks graph(s) audio_tokenizer",
     "bcaudio export --graphs"),
    ("speak-llm-only-package", "speak --model {pkg_llm} --text hello", "lacks graph(s) audio_head",
     "bcaudio export --graphs"),
    ("respond-missing-graph-file", "respond --model {pkg_missing} --input {speech}", "vocoder.onnx is missing",
     "copy the whole package"),
    ("respond-corrupt-manifest", "respond --model {pkg_manifest} --input {speech}", "not valid JSON",
     "re-export"),
    ("respond-modified-graph", "respond --model {pkg_sha} --input {speech}", "does not match its sha256",
     "re-copy or re-export"),
    ("quantize-corrupt-package", "quantize {pkg_sha} --recipe int4 --out {root}/q", "does not match its sha256",
     "re-copy or re-export"),
    ("respond-not-a-package", "respond --model {out} --input {speech}", "no manifest.json", "bcaudio export"),
    # partial and corrupt checkpoints
    ("export-truncated-shard", "export --checkpoint {ckpt_truncated} --out {root}/x", "truncated or corrupt",
     "re-copy it"),
    ("generate-truncated-shard", "generate --checkpoint {ckpt_truncated} --input {speech}",
     "truncated or corrupt", "re-copy it"),
    ("export-nan-weight", "export --checkpoint {ckpt_nan} --out {root}/x", "{nan_key}", "NaN"),
    # fresh cases of the same classes (second round, after the first table passed)
    ("respond-inf", "respond --model {pkg} --input {inf}", "NaN or infinity", "check the recording"),
    ("respond-dev-null", "respond --model {pkg} --input /dev/null", "empty file", "WAV or FLAC"),
    ("threads-fraction", "respond --model {pkg} --input {speech} --threads 3.5", "not a whole number", "threads"),
    ("seed-exponent", "respond --model {pkg} --input {speech} --seed 1e3", "not a whole number", "seed"),
    ("speak-blank-text", "speak --model {pkg} --text ' '", "--text is empty", "give the words"),
    ("profile-not-toml", "respond --model {pkg} --input {speech} --device-profile {garbage_toml}",
     "not valid TOML", "shipped profile"),
    ("profile-negative-steps", "respond --model {pkg} --input {speech} --device-profile {steps_profile}",
     "flow_steps", ">= 1"),
    ("profile-unknown-name", "respond --model {pkg} --input {speech} --device-profile cpu-99core",
     "no device profile", "pass a path"),
    ("output-read-only", "respond --model {pkg} --input {speech} --output {readonly}", "read-only",
     "choose another name"),
    ("compare-not-utf8", "profile compare {latin1} {latin1} --chart {out}/c.png", "not UTF-8", "bcaudio profile"),
    ("export-recipe-unknown", "export --checkpoint {ckpt} --out {root}/x --recipe int5", "unknown 'int5'",
     "choose from"),
    ("export-from-a-package", "export --checkpoint {pkg} --out {root}/x", "is a model package",
     "checkpoint folder it was exported from"),
    ("serve-turn-seconds-0", "serve --model {pkg} --max-turn-seconds 0", "out of range", "[1, 300]"),
    ("serve-port-negative", "serve --model {pkg} --port -1", "out of range", "0..65535"),
    ("export-corrupt-config", "export --checkpoint {ckpt_config} --out {root}/x", "config.json: not valid JSON",
     "`bcaudio init`"),
]


@pytest.mark.parametrize(("argv", "problem", "fix"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(world: World, capsys: pytest.CaptureFixture[str], argv: str, problem: str,
                                      fix: str) -> None:
    names = {k: str(v) for k, v in world.files.items()}
    before = {p.name: p.read_bytes() for p in world.files["out"].iterdir() if p.is_file()}
    code, out, err = run(shlex.split(argv.format(**names)), capsys)
    line = err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in err and "\n" not in line, err
    assert line.startswith("bcaudio ") and "error" in line, line
    assert problem.format(**names) in line and fix in line, line
    assert {p.name: p.read_bytes() for p in world.files["out"].iterdir() if p.is_file()} == before
    assert leftovers(world.files["out"]) == [] and leftovers(world.root) == []
    assert not (world.root / "x").exists() and not (world.root / "q").exists()


def test_debug_shows_the_traceback(world: World) -> None:
    from bcaudio.runtime.package.manifest import ManifestError

    argv = ["respond", "--model", str(world.files["pkg_llm"]), "--input", str(world.files["speech"])]
    with pytest.raises(ManifestError, match="lacks graph"):
        main(["--debug", *argv])
    env = {**os.environ, "BCAUDIO_DEBUG": "1"}
    done = subprocess.run([sys.executable, "-m", "bcaudio", *argv], capture_output=True, text=True, env=env)
    assert done.returncode != 0 and "Traceback" in done.stderr and "ManifestError" in done.stderr


def test_version_and_python_m() -> None:
    import bcaudio

    done = subprocess.run([sys.executable, "-m", "bcaudio", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"bcaudio {bcaudio.__version__}"


def test_broken_pipe_is_silent() -> None:
    """`bcaudio profiles | head`: the reader is gone before the table is written."""
    proc = subprocess.Popen([sys.executable, "-m", "bcaudio", "profiles"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader exits at once
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert err == "", err


@pytest.mark.parametrize(("command", "extra"), [("export", "export"), ("info", "export"), ("quantize", "export"),
                                                 ("bench", "bench")])
def test_missing_extra_is_named(world: World, command: str, extra: str) -> None:
    """A runtime-only install (no torch, onnx, optimum): the command names the extra to install."""
    argv = {"export": ["export", "--checkpoint", str(world.ckpt), "--out", str(world.root / "x")],
            "info": ["info", str(world.ckpt)],
            "quantize": ["quantize", str(world.pkg), "--out", str(world.root / "q")],
            "bench": ["bench", "--preset", "tiny", "--workdir", str(world.root / "bx")]}[command]
    script = ("import sys\nfor m in ('torch', 'onnx', 'onnxscript', 'safetensors', 'optimum', 'transformers'):\n"
              "    sys.modules[m] = None\nfrom bcaudio.cli import main\nsys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
    line = done.stderr.strip()
    assert done.returncode == 2 and "Traceback" not in line and "\n" not in line, done.stderr
    assert f"`bcaudio {command}` needs the {extra} extra: pip install 'bcaudio[{extra}]'" in line, line
    assert not (world.root / "x").exists() and not (world.root / "q").exists()


# ----- a full disk -----


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A tmpfs of 32 MB mounted at tmp_path/disk (None when this test may not mount: then ENOSPC is simulated)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free."""
    free = shutil.disk_usage(disk).free
    with (disk / "filler").open("wb") as f:
        f.write(b"\0" * max(0, free - leave))


def _simulate_enospc(monkeypatch: pytest.MonkeyPatch, after_bytes: int) -> None:
    """Writes through bcaudio.atomic fail with ENOSPC once ``after_bytes`` have been written (a disk filling up)."""
    import bcaudio.atomic as atomic

    real = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if len(data) > after_bytes:
            real(self, data[:after_bytes])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    monkeypatch.setattr(atomic.Path, "write_bytes", write_bytes)


def test_disk_full_while_writing_the_answer_keeps_the_previous_wav(world: World, small_disk: Path | None,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = small_disk or world.root / "full"
    folder.mkdir(exist_ok=True)
    answer = folder / "answer.wav"
    answer.write_bytes(PREVIOUS)
    if small_disk is not None:
        _fill(small_disk, 16 * 1024)  # a tiny answer is 2+ s of 24 kHz 16-bit audio: > 96 kB
    else:
        _simulate_enospc(monkeypatch, 16 * 1024)
    code, out, err = run(["respond", "--model", str(world.pkg), "--input", str(world.files["speech"]), "--output",
                          str(answer), "--seed", "3"], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err
    assert "disk full" in line and "previous file" in line and "Free space" in line, line
    assert answer.read_bytes() == PREVIOUS
    assert leftovers(folder) == []


def test_disk_full_during_export_keeps_the_previous_package(world: World, small_disk: Path | None,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if small_disk is None:
        pytest.skip("needs a tmpfs (run as root): a package's graphs are written by onnx, not through one call")
    target = small_disk / "pkg"
    shutil.copytree(world.pkg, target)
    manifest = (target / "manifest.json").read_bytes()
    _fill(small_disk, 2 * 1024 * 1024)  # the new package (8+ MB) cannot fit beside the old one
    code, out, err = run(["export", "--checkpoint", str(world.ckpt), "--out", str(target), "--overwrite"], capsys)
    line = err.strip()
    assert code == 2 and "Traceback" not in err and "\n" not in line, err
    assert "disk full" in line and "previous package is unchanged" in line, line
    assert (target / "manifest.json").read_bytes() == manifest
    load_manifest(target, verify=True)
    assert leftovers(small_disk) == []


# ----- killed writers -----


def test_killed_file_writer_leaves_the_previous_file_and_the_next_write_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "answer.wav"
    target.write_bytes(PREVIOUS)
    script = ("import sys, time\nfrom bcaudio.atomic import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    f = tmp.open('wb')\n    f.write(b'RIFF' * 1000)\n"
              "    f.flush()\n    print('writing', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert target.read_bytes() == PREVIOUS
    (stale,) = leftovers(tmp_path)
    from bcaudio.runtime.audio.files import save_audio

    notes: list[str] = []
    import bcaudio.atomic as atomic

    atomic.clean_stale(target, notes.append)
    assert notes and stale in notes[0] and "interrupted run" in notes[0]
    save_audio(target, noise(0.5, 24000), 24000)
    assert leftovers(tmp_path) == [] and sf.info(str(target)).frames == 12000


def test_export_killed_mid_way_keeps_the_old_package(world: World, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "pkg"
    shutil.copytree(world.pkg, target)
    manifest = (target / "manifest.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "bcaudio", "export", "--checkpoint", str(world.ckpt), "--out",
                             str(target), "--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = tmp_path / f".pkg.bcaudio-tmp-{proc.pid}"
    deadline = time.monotonic() + 300
    while not (staging.is_dir() and any(p.stat().st_size for p in staging.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "export ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (target / "manifest.json").read_bytes() == manifest
    load_manifest(target, verify=True)  # the old package is whole and usable
    assert leftovers(tmp_path) == [staging.name]
    # the next run removes what the killed one left, and says so
    code, out, err = run(["export", "--checkpoint", str(world.ckpt), "--out", str(target), "--graphs", "llm",
                          "--overwrite"], capsys)
    assert code == 0, err
    assert f"removed {staging}" in out + err and "interrupted run" in out + err
    assert leftovers(tmp_path) == []
    assert list(load_manifest(target, verify=True).graphs) == ["llm"]


def test_killed_swap_is_restored_on_the_next_run(tmp_path: Path) -> None:
    """A run killed between its two renames (old moved aside, new not yet in place) gets the old folder back."""
    import bcaudio.atomic as atomic

    target = tmp_path / "pkg"
    old = tmp_path / ".pkg.bcaudio-old-999999999"  # no such pid: its run is gone
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    notes: list[str] = []
    atomic.clean_stale(target, notes.append)
    assert (target / "manifest.json").read_text() == "{}" and not old.exists()
    assert "restored" in notes[0]


# ----- CLI manners -----


def test_stdout_holds_only_the_answer(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["respond", "--model", str(world.pkg), "--input", str(world.files["speech"]), "--seed", "1"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    code, js, _ = run([*argv, "--json"], capsys)
    assert code == 0
    assert out == json.loads(js)["text"] + "\n"  # `> out.txt` holds the answer and nothing else
    assert "text tokens" in err and "stop:" in err  # the statistics went to stderr
    assert "audio discarded; pass --output" in err  # respond without --output says so


def test_profile_compare_flags_reports_of_different_work(world: World, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    made = tmp_path / "made.json"
    code, _, err = run(["profile", "--model", str(world.pkg), "--device-profile", "cpu-2core", "--input",
                        str(world.files["speech"]), "--turns", "1", "--warmup", "0", "--no-charts", "--output",
                        str(made)], capsys)
    assert code == 0, err
    assert leftovers(tmp_path) == [] and made.with_suffix(".md").exists()
    report = json.loads(made.read_text())
    variants = {"same": {}, "input": {"input": {"source": "other.wav", "seconds": 2.0}},
                "live": {"settings": {**report["settings"], "live_prefill": not report["settings"]["live_prefill"]}},
                "steps": {"profile": {**report["profile"], "generation": {**report["profile"]["generation"],
                                                                          "flow_steps": 10}}}}
    paths = {}
    for name, change in variants.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps({**report, **change}))
    chart = str(tmp_path / "c.png")
    code, out, _ = run(["profile", "compare", str(paths["same"]), str(tmp_path / "same.json"), "--chart", chart],
                       capsys)
    assert code == 0 and "warning" not in out
    for name, word in (("input", "input"), ("live", "live prefill"), ("steps", "flow steps")):
        code, out, _ = run(["profile", "compare", str(paths["same"]), str(paths[name]), "--chart", chart], capsys)
        warnings = [line for line in out.splitlines() if line.startswith("warning:")]
        assert code == 0 and len(warnings) == 1 and f"differ in {word}" in warnings[0], out


def test_auto_profile_describes_the_detected_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    from bcaudio.runtime.package.profiles import DeviceInfo, detect_device, pick_profile, resolve_profile

    assert "AVX-512 VNNI" in DeviceInfo(2, ["avx2", "avx512f", "avx512_vnni"], "").describe()
    assert "no VNNI" not in DeviceInfo(2, ["avx2", "avx512f", "avx512_vnni"], "").describe()
    assert "AVX2, no VNNI" in DeviceInfo(2, ["avx2"], "").describe()
    lines: list[str] = []
    profile = resolve_profile("auto", lines.append)
    device = detect_device()
    assert device.describe() in lines[0]
    # the picked profile's own description must not contradict what was detected
    has_vnni = any(f in device.isa for f in ("avx512_vnni", "avx_vnni"))
    assert not (has_vnni and "no VNNI" in profile.description), profile.description
    for isa in (["avx2"], ["avx2", "avx512_vnni"]):
        assert "no VNNI" not in pick_profile(DeviceInfo(2, isa, "")).description


def test_chat_without_an_audio_device_waits_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """README: a missing device is one message and a retry every 2 s (a kiosk may boot before its speaker)."""
    import io

    import bcaudio.cli.chat as chat
    from bcaudio.runtime.audio import devices

    attempts = {"n": 0}

    def output_rate(device: str | None, rate: int) -> int:
        attempts["n"] += 1
        if attempts["n"] < 4:
            raise devices.AudioDeviceError("no output device (none found)")
        return 48000

    sleeps: list[float] = []
    monkeypatch.setattr(devices.DeviceStreams, "output_rate", staticmethod(output_rate))
    monkeypatch.setattr(chat.time, "sleep", sleeps.append)
    view = chat.ChatView(out=io.StringIO())
    assert chat._wait_for_output(None, 24000, view) == 48000
    assert sleeps == [chat.RETRY_SECONDS] * 3
    assert view.out.getvalue().count("no output device") == 1  # said once, not every 2 s

    def no_backend(device: str | None, rate: int) -> int:
        raise devices.AudioBackendMissing("sounddevice is not installed")

    monkeypatch.setattr(devices.DeviceStreams, "output_rate", staticmethod(no_backend))
    with pytest.raises(devices.AudioBackendMissing):
        chat._wait_for_output(None, 24000, view)


def test_live_turn_dropped_names_its_cause(world: World, speech_16k: np.ndarray) -> None:
    """An utterance longer than the context: the notice says why the turn was dropped (it was an empty reason)."""
    from bcaudio.runtime.audio.devices import SpeakerOutput
    from bcaudio.runtime.generation.assistant import VoiceAssistant
    from bcaudio.runtime.live.conversation import LiveSession, Notice, drive_from_audio

    assistant = VoiceAssistant(world.pkg, context_tokens=40, log=lambda _: None)
    notices: list[str] = []
    session = LiveSession(assistant, SpeakerOutput(assistant.sample_rate),
                          ui=lambda e: notices.append(e.message) if isinstance(e, Notice) else None)
    audio = np.concatenate([np.zeros(8000, np.float32), speech_16k, np.zeros(16000, np.float32)])
    try:
        drive_from_audio(session, audio + noise(audio.size / 16000, level=0.003), 16000)
    finally:
        session.close()
    dropped = [n for n in notices if n.startswith("turn dropped:")]
    assert dropped, notices
    assert all("positions" in n and "context holds 40" in n for n in dropped), dropped
