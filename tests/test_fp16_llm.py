"""The fp16 recipe on the fast llm graph: the shared KV buffer is float16 end to end.

GroupQueryAttention reads the fp16 past and writes the fp16 present itself (no Cast on either side,
so the buffer ``LlmState`` binds as both stays shared in place), logits and hidden states stay
float32, and the graph runs through ``LlmState`` on CPU (onnxruntime's CPU GroupQueryAttention has
an fp16 kernel) within the fp16 recipe's llm tolerances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from bcaudio.config import ModelConfig
from bcaudio.export.checkpoint import init_checkpoint
from bcaudio.export.package import export_package
from bcaudio.metrics import rel_l2
from bcaudio.presets import get_preset
from bcaudio.quant.accuracy import GREEDY_STEPS, TOLERANCES
from bcaudio.quant.fp16 import quantize_fp16
from bcaudio.runtime.package.llm_state import LlmState

QUIET = lambda _: None  # noqa: E731
KV = ("past_", "present_")


@pytest.fixture(scope="module")
def llm_graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny package's (fast) llm graph, fp32 and fp16."""
    root = tmp_path_factory.mktemp("fp16_llm")
    ckpt = init_checkpoint(get_preset("tiny"), root / "ckpt", seed=0)
    export_package(ckpt, root / "pkg", graphs=["llm"], progress=QUIET)
    fp16 = root / "fp16" / "llm.onnx"
    quantize_fp16(root / "pkg" / "llm.onnx", fp16, "llm")
    return root / "pkg" / "llm.onnx", fp16


def _types(values: list[onnx.ValueInfoProto]) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_kv_io_is_fp16_and_read_and_written_by_gqa_directly(llm_graphs: tuple[Path, Path]) -> None:
    src, dst = (onnx.load(str(p)) for p in llm_graphs)
    assert "seqlens_k" in _types(src.graph.input), "the package default llm graph is the fast one"
    for io in ("input", "output"):
        before, after = _types(getattr(src.graph, io)), _types(getattr(dst.graph, io))
        assert list(after) == list(before)
        want = {n: TensorProto.FLOAT16 if n.startswith(KV) else t for n, t in before.items()}
        assert after == want, io  # logits, hidden_states float32 as before; ids, codes, seqlens unchanged
    gqa = [n for n in dst.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == get_preset("tiny").llm.layers
    for i, node in enumerate(gqa):
        assert list(node.input[3:5]) == [f"past_key.{i}", f"past_value.{i}"]
        assert list(node.output[1:3]) == [f"present_key.{i}", f"present_value.{i}"]
    casts = [n for n in dst.graph.node if n.op_type == "Cast"]
    touching = [n.name for n in casts if any(x.startswith(KV) for x in [*n.input, *n.output])]
    assert touching == []
    outputs = {o for n in casts for o in n.output}
    assert {"logits", "hidden_states"} <= outputs  # the float32 outputs are cast from the fp16 graph


def _prompt(cfg: ModelConfig) -> tuple[list[int], np.ndarray]:
    """A chat prompt with 12 audio frames, as the accuracy report builds it."""
    t, frames = cfg.tokens, 12
    ids = [t.system, 11, 23, t.user, t.audio_start, *[t.audio_pad] * frames, t.audio_end, t.assistant]
    rng = np.random.default_rng(0)
    codes = np.zeros((len(ids), cfg.bridge.num_codebooks), np.int64)
    codes[5:5 + frames] = np.stack([rng.integers(0, n, frames) for n in cfg.bridge.codebook_sizes], axis=-1)
    return ids, codes


def test_fp16_llm_runs_through_llm_state_within_tolerance(llm_graphs: tuple[Path, Path],
                                                          tiny_cfg: ModelConfig) -> None:
    """Teacher-forced greedy decoding (both fed the fp32 choice) against the fp16 recipe's llm bounds; the
    buffer starts small so it also grows (doubles) in fp16 on the way."""
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in llm_graphs]
    f32, f16 = (LlmState(s, tiny_cfg.llm.kv_heads, tiny_cfg.llm.head_dim, tiny_cfg.bridge.num_codebooks,
                         kv_capacity=8) for s in sessions)
    assert f32.shared and f16.shared and f16.dtype == np.float16
    assert {v.data_type() for v in f16.past.values()} == {"tensor(float16)"}
    feed = _prompt(tiny_cfg)
    top1, got, want = 0, [], []
    for _ in range(GREEDY_STEPS):
        buffers = dict(f16.past)
        (lq, hq), (lf, _) = f16.feed(*feed), f32.feed(*feed)
        assert lq.dtype == np.float32 and hq.dtype == np.float32
        if f16.capacity == buffers["past_key.0"].shape()[2]:  # no growth: GQA wrote into the bound buffer
            assert all(f16.past[n] is v for n, v in buffers.items())
        top1 += int(lq.argmax()) == int(lf.argmax())
        got.append(lq)
        want.append(lf)
        feed = ([int(lf.argmax())], None)
    assert f16.position == f32.position and f16.capacity >= f16.position > 8
    bounds = TOLERANCES["fp16"]["llm"]
    assert top1 / GREEDY_STEPS >= bounds["top1_agreement"][1]
    assert rel_l2(np.stack(got), np.stack(want)) <= bounds["logits_rel_l2"][1]
    cache16, cache32 = f16.cache(), f32.cache()
    for name, value in cache16.items():
        assert value.dtype == np.float16 and np.any(value[:, :, -1])  # the last position was written in place
        assert rel_l2(value.astype(np.float32), cache32[name]) <= bounds["logits_rel_l2"][1]
