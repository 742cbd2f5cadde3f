"""onnxruntime-genai as a peer: its model builder's int4 Qwen2 and its own generator, timed like every variant.

The builder runs in a child process: it loads the whole Qwen2 in torch and its memory goes back
when it ends. onnxruntime-genai 0.18's builder imports model classes of transformers 5 at
module level (Qwen3.5 and others it never uses for a Qwen2); the bench extra keeps the
transformers that optimum-onnx pins (4.57), so the child gives those names empty stand-ins
before importing the builder. Qwen2 is built by ``Qwen2ForCausalLM`` code that 4.57 has.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bcaudio.errors import UserError

GENAI_GRAPH = "model.onnx"
_CHILD = """
import runpy, sys, transformers
for name in ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"):
    if name not in dir(transformers):
        setattr(transformers, name, type(name, (), {}))
sys.argv = ["builder", *sys.argv[1:]]
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
"""


def _genai():  # noqa: ANN202 - the module, imported only where installed
    try:
        import onnxruntime_genai
    except ImportError:
        raise UserError("genai-int4 needs onnxruntime-genai: pip install -e '.[bench]'") from None
    return onnxruntime_genai


def genai_version() -> str:
    return _genai().__version__


def build_genai(hf_dir: Path, out: Path, cache: Path) -> None:
    """int4 for the CPU with the builder's defaults (what a user of onnxruntime-genai gets)."""
    _genai()
    cmd = [sys.executable, "-c", _CHILD, "-i", str(hf_dir), "-o", str(out), "-p", "int4", "-e", "cpu",
           "-c", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not (out / GENAI_GRAPH).exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"onnxruntime-genai's model builder failed on {hf_dir}: {tail[0][:200]}")


class GenaiDecoder:
    """onnxruntime-genai's ``Generator`` on its own model folder, ``threads`` intra-op threads (batch 1)."""

    def __init__(self, name: str, folder: Path, threads: int, max_length: int) -> None:
        og = _genai()
        self.name, self.og = name, og
        config = og.Config(str(folder))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.params = og.GeneratorParams(self.model)
        self.params.set_search_options(max_length=max_length, do_sample=False)
        self.generator = og.Generator(self.model, self.params)

    def reset(self) -> None:
        self.generator.rewind_to(0)

    def feed(self, ids: np.ndarray) -> np.ndarray:
        self.generator.append_tokens(np.asarray(ids, np.int32))
        return np.asarray(self.generator.get_logits(), np.float32).reshape(-1)

    def truncate(self, position: int) -> None:
        self.generator.rewind_to(position)
