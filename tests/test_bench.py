"""``bcaudio bench`` end to end on ``tiny`` with tiny iteration counts, so the benchmark never rots.

No speed figure is asserted (they depend on the machine); the document's structure is, every figure
must be a finite number, and the fp32 variants must compute the same logits as the torch reference:
the proof that every variant runs the same weights.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bcaudio.benchmarks.decoders import PackageDecoder
from bcaudio.benchmarks.frame import frame_llm_ms
from bcaudio.cli import main
from bcaudio.cli.bench import VARIANTS

CONTEXTS = (16, 48)
try:
    import onnxruntime_genai  # noqa: F401

    HAS_GENAI = True
except ImportError:
    HAS_GENAI = False
RUN = VARIANTS if HAS_GENAI else tuple(v for v in VARIANTS if v != "genai-int4")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("bench")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", "--preset", "tiny", "--workdir", str(tmp / "work"), "--contexts",
                     ",".join(map(str, CONTEXTS)), "--iterations", "2", "--warmup", "1", "--prefill-repeats", "1",
                     "--bandwidth-mb", "64", "--first-text-tokens", "4",
                     "--accuracy-steps", "8", "--sessions", "1,2", "--variants", ",".join(RUN), "--json"])
    assert code == 0
    return json.loads(out.getvalue()), tmp


def test_every_variant_has_finite_figures(bench: tuple[dict, Path]) -> None:
    result, _ = bench
    assert result["schema"] == "bcaudio-bench/2" and result["preset"] == "tiny"
    assert set(result["variants"]) == set(RUN)
    assert all(_finite(result["bandwidth"][k]) and result["bandwidth"][k] > 0
               for k in ("single_thread_gb_s", "all_threads_gb_s", "best_gb_s"))
    for name, v in result["variants"].items():
        assert v["weight_bytes_per_step"] > 0, name
        assert set(v["contexts"]) == {str(n) for n in CONTEXTS}, name
        for figures in v["contexts"].values():
            for key in ("prefill_tok_s", "decode_ms", "decode_tok_s", "roofline_ms", "roofline_pct"):
                assert _finite(figures[key]) and figures[key] > 0, (name, key, figures[key])
        if name.startswith("bcaudio-"):
            assert _finite(v["audio_head_ms_per_frame"])
            assert all(_finite(f["full_frame_ms"]) and _finite(f["margin_ms"]) for f in v["frame"].values())
            turn = v["turn"]
            assert _finite(turn["first_audio_ms"]) and _finite(turn["rtf"]) and turn["answer_audio_s"] > 0, name
            assert turn["prefilled_while_speaking"] > 0 and turn["prefilled_after_speech"] > 0
            assert 0 < turn["cores_busy"] <= 1.05, name  # CPU time over turn time x cores
            assert 1 <= turn["text_tokens_to_first_audio"] <= turn["first_text_tokens_cap"] == 4
            assert 1 <= turn["frames_to_first_audio"] <= turn["stream_first_window_frames"]  # the profile streams
    genai = {f"int4_vs_genai_int4@{n}" for n in CONTEXTS} | {"int4_logits_rel_l2_vs_genai"} if HAS_GENAI else set()
    assert set(result["targets"]) == {"int4_vs_optimum_int4", "int4_roofline_pct", "full_frame_ms",
                                      "first_audio_ms"} | genai


def test_frame_step_is_an_audio_position_without_logits(tiny_package: Path) -> None:
    """The frame's llm step is timed as the speech loop feeds it: one ``<audio_pad>`` with its codes, the lm_head
    skipped; each timed step rewound to its context."""
    decoder = PackageDecoder("bcaudio-fp32", tiny_package, 1)
    assert decoder.llm.skips_logits  # the exported graph has the switch the step relies on
    calls: list[tuple[list[int], object, bool]] = []
    feed = decoder.llm.feed

    def spy(ids, codes=None, logits=True):  # noqa: ANN001, ANN202
        calls.append((list(ids), codes, logits))
        return feed(ids, codes, logits)

    decoder.llm.feed = spy
    ms = frame_llm_ms(decoder, np.arange(100, 140), (8, 24), iterations=2, warmup=1)
    assert set(ms) == {8, 24} and all(_finite(v) and v > 0 for v in ms.values())
    pad = decoder.sessions.cfg.tokens.audio_pad
    frames = [c for c in calls if c[0] == [pad]]
    assert len(frames) == 2 * 3 and not any(logits for _, _, logits in frames)
    sizes = decoder.sessions.cfg.bridge.codebook_sizes
    assert all(np.asarray(codes).shape == (1, len(sizes)) and (np.asarray(codes)[0] < sizes).all()
               for _, codes, _ in frames)
    assert decoder.llm.position == 24


def test_sessions_table_runs_batched_and_separate(bench: tuple[dict, Path]) -> None:
    sessions = bench[0]["sessions"]
    assert sessions["variant"] == "bcaudio-int4"
    runs = {(r["sessions"], r["batched"]): r for r in sessions["runs"]}
    assert set(runs) == {(1, True), (1, False), (2, True), (2, False)}
    for r in runs.values():
        assert r["frames"] > 0 and _finite(r["aggregate_frames_per_s"]) and _finite(r["first_audio_ms_median"])
        assert len(r["turns"]) == r["sessions"] and all(t["reason"] for t in r["turns"])
        assert 0 < r["cores_busy"] <= 1.05
    assert runs[(1, False)]["x_one_session"] == 1.0
    assert runs[(2, True)]["mean_llm_batch"] > 1.0  # two conversations shared steps
    assert runs[(2, True)]["frames"] == runs[(2, False)]["frames"]  # the same answers, batched or not


def test_fp32_variants_run_the_same_weights(bench: tuple[dict, Path]) -> None:
    result, _ = bench
    for name in ("optimum-fp32", "bcaudio-fp32"):
        check = result["variants"][name]["logits_vs_reference"]
        assert check["reference"] == "torch-fp32"
        for n in map(str, CONTEXTS):
            assert check[n]["max_abs"] < 1e-4 and check[n]["top1_equal"], (name, n, check[n])
        forced = check["teacher_forced"]
        assert forced["steps"] == 8 and forced["rel_l2"] < 1e-5 and forced["top1_agreement"] == 1.0, (name, forced)
    # the roofline charges each variant for what its graph stores (tiny's K=64 weights fill half of an int4
    # block of 128, so its int4 is not smaller than its int8 in blocks of 32; on small it is 0.50x)
    step = {name: v["weight_bytes_per_step"] for name, v in result["variants"].items()}
    assert step["bcaudio-int4"] < 0.45 * step["bcaudio-fp32"] and step["bcaudio-int8"] < 0.4 * step["bcaudio-fp32"]
    assert step["optimum-int4"] < 0.3 * step["optimum-fp32"]
    assert abs(step["optimum-fp32"] - step["bcaudio-fp32"]) < 0.01 * step["bcaudio-fp32"]  # same weights


@pytest.mark.skipif(not HAS_GENAI, reason="onnxruntime-genai is not installed (the bench extra pulls it)")
def test_genai_variant_runs_its_own_generator_on_the_same_weights(bench: tuple[dict, Path]) -> None:
    """genai's builder read the same Qwen2 folder: int4 error against fp32, not another model's logits."""
    result, tmp = bench
    genai = result["variants"]["genai-int4"]
    assert genai["kind"] == "genai" and "onnxruntime-genai" in genai["layout"]
    assert (tmp / "work" / "genai-int4" / "genai_config.json").exists()
    forced = genai["logits_vs_reference"]["teacher_forced"]
    int4 = result["variants"]["bcaudio-int4"]["logits_vs_reference"]["teacher_forced"]
    assert 1e-3 < forced["rel_l2"] < 0.6 and forced["top1_agreement"] >= 0.35  # the int4 bounds of quant/accuracy.py
    assert 1e-3 < int4["rel_l2"] < 0.6
    step = result["variants"]["genai-int4"]["weight_bytes_per_step"]
    assert step < 0.3 * result["variants"]["bcaudio-fp32"]["weight_bytes_per_step"]  # 4-bit weights
    for n in map(str, CONTEXTS):
        assert result["ratios"][f"decode_speedup_vs_genai-int4@{n}"]["bcaudio-int4"] > 0


def test_results_file_and_cached_inputs(bench: tuple[dict, Path]) -> None:
    result, tmp = bench
    work = tmp / "work"
    files = list((work / "results").glob("tiny-*.json"))  # under --workdir, never in the installed package
    assert len(files) == 1 and json.loads(files[0].read_text())["variants"].keys() == result["variants"].keys()
    import bcaudio.benchmarks

    installed = Path(bcaudio.benchmarks.__file__).parent
    assert not [p for p in installed.rglob("tiny-*.json")], "bench wrote into the package folder"
    assert not [p for p in work.iterdir() if ".bcaudio-" in p.name]  # no staging folder left behind
    made = {"ckpt", "pkg-fp32", "pkg-int8", "pkg-int4", "hf-qwen2", "optimum-fp32", "optimum-int4"}
    assert {p.name for p in work.iterdir()} >= made | ({"genai-int4"} if HAS_GENAI else set())


def test_printed_targets_are_the_readmes() -> None:
    """The targets `bcaudio bench` checks are the table in README's "Performance", value for value."""
    import re

    from bcaudio.benchmarks.runner import TARGETS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| [<>]= ([\d.]+)", readme, re.MULTILINE))
    assert rows, "README has no bench targets table"
    assert {k: float(v) for k, v in rows.items()} == {k: float(v) for k, v in TARGETS.items()}


def test_unknown_variant_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--preset", "tiny", "--workdir", str(tmp_path), "--variants", "bcaudio-int3"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bcaudio bench: error: argument --variants: unknown bcaudio-int3") and "\n" not in err
    assert not any(tmp_path.iterdir())  # refused before any work


def test_one_context_with_accuracy_steps_past_it(bench: tuple[dict, Path]) -> None:
    """The accuracy steps run on from the shortest context, so one context is enough (it used to be refused)."""
    _, tmp = bench
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", "--preset", "tiny", "--workdir", str(tmp / "work"), "--contexts", "16",
                     "--iterations", "1", "--warmup", "0", "--prefill-repeats", "1", "--bandwidth-mb", "16",
                     "--turns", "0", "--accuracy-steps", "6", "--variants", "bcaudio-fp32,bcaudio-int4", "--json"])
    assert code == 0
    result = json.loads(out.getvalue())
    assert list(result["variants"]["bcaudio-int4"]["contexts"]) == ["16"]
    forced = result["variants"]["bcaudio-int4"]["logits_vs_reference"]["teacher_forced"]
    assert forced["steps"] == 6 and 1e-3 < forced["rel_l2"] < 0.6
