"""Quantization recipes: which precision each graph gets, built in or from a TOML file.

A recipe names a precision per graph (unnamed graphs stay fp32) and the int4 block size.
The built-in ones, chosen by the accuracy reports on ``small`` (``bcaudio quantize-table``,
docs/quantization-small.md; the numbers behind each choice: docs/quantization-choices.md; ``tiny`` is
too shallow to show the error a deep stack builds up):

- ``fp16``  every graph but the audio tokenizer fp16 with fp32 islands (for CUDA; fp16 is slower than fp32 on
  CPU); the tokenizer for the reason below (fp16 saves little and breaks its codes past the bound);
- ``int8``  llm and audio head in 8-bit weight blocks, flow pre-net and estimator dynamic int8 (uint8
  weights per channel). The audio tokenizer stays fp32: its bytes are the RVQ codebooks, kept fp32 for
  the distances, so int8 saves little and breaks its codes past the bound, dynamic or in 8-bit blocks
  (docs/quantization-choices.md). The vocoder's only MatMuls are in its fp32-kept F0 predictor and source;
- ``int4``  4-bit blocks of 128 on the llm and the audio head (the decode loop's weights), the rest fp32;
- ``mixed`` the CPU default: int4 llm and audio head, everything else fp32 (the tokenizer for the reason
  above; flow and vocoder run once per segment, are conv-heavy and their errors are audible).

A TOML recipe (so device profiles can point at one)::

    description = "my phone"      # optional
    block_size = 32               # optional, int4 block size (power of two >= 16)
    int4_rounding = "hqq"         # optional: rtn (default) or hqq (quant/blocks.py)
    [graphs]
    llm = "int4"
    audio_tokenizer = "int8"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bcaudio.documents import read_document
from bcaudio.runtime.package.manifest import GRAPHS
from bcaudio.runtime.package.profiles import PRECISIONS

DEFAULT_BLOCK_SIZE = 32
# the built-in int4 recipes' blocks: block 128 reads fewer bytes and does a quarter of the per-block work of
# block 32, for a larger logits error that stays inside the int4 bounds and below onnxruntime-genai's int4 build
# of the same weights (measured: docs/benchmarks.md, "The int4 blocks", tools/int4_llm_study.py)
INT4_BLOCK_SIZE = 128
ROUNDING = ("rtn", "hqq")  # onnxruntime's roundings of 4-bit blocks (quant/blocks.py)
FP32 = "fp32"


class QuantError(ValueError):
    """A recipe or package that cannot be quantized; the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class Recipe:
    name: str
    precisions: dict[str, str] = field(default_factory=dict)
    block_size: int = DEFAULT_BLOCK_SIZE
    description: str = ""
    int4_rounding: str = "rtn"  # how 4-bit blocks are rounded (quant/blocks.py: rtn, hqq)

    def precision(self, graph: str) -> str:
        return self.precisions.get(graph, FP32)


BUILTIN: dict[str, Recipe] = {
    "fp16": Recipe("fp16", {g: "fp16" for g in GRAPHS if g != "audio_tokenizer"},
                   description="CUDA: fp16 with fp32 islands (tokenizer fp32)"),
    "int8": Recipe("int8", {g: "int8" for g in ("llm", "audio_head", "flow_prenet", "flow_estimator")},
                   description="8-bit llm + head blocks, dynamic int8 flow (tokenizer, vocoder fp32)"),
    "int4": Recipe("int4", {"llm": "int4", "audio_head": "int4"}, block_size=INT4_BLOCK_SIZE,
                   description="4-bit llm and audio head"),
    "mixed": Recipe("mixed", {"llm": "int4", "audio_head": "int4"}, block_size=INT4_BLOCK_SIZE,
                    description="CPU default: int4 llm + head, fp32 tokenizer, flow and vocoder"),
}


def check_precisions(precisions: dict[str, object], where: str) -> dict[str, str]:
    """Graph names and precision values, each checked; -> the mapping as strings."""
    for graph, precision in precisions.items():
        if graph not in GRAPHS:
            raise QuantError(f"{where}: unknown graph {graph!r}; graphs: {', '.join(GRAPHS)}")
        if precision not in PRECISIONS:
            raise QuantError(f"{where}: {graph} = {precision!r} is not a precision; choose one of "
                             f"{', '.join(PRECISIONS)}")
    return {str(g): str(p) for g, p in precisions.items()}


def parse_recipe(raw: dict[str, object], name: str, where: str) -> Recipe:
    """A recipe from a TOML table; strict, so a typo is an error rather than a silently fp32 graph."""
    allowed = {"description", "block_size", "graphs", "int4_rounding"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise QuantError(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(allowed))}")
    graphs = raw.get("graphs", {})
    if not isinstance(graphs, dict) or not graphs:
        raise QuantError(f"{where}: needs a [graphs] table naming a precision per graph, e.g. llm = \"int4\"")
    block = raw.get("block_size", DEFAULT_BLOCK_SIZE)
    if isinstance(block, bool) or not isinstance(block, int) or block < 16 or block & (block - 1):
        raise QuantError(f"{where}: block_size must be a power of two >= 16, got {block!r}")
    rounding = raw.get("int4_rounding", "rtn")
    if rounding not in ROUNDING:
        raise QuantError(f"{where}: int4_rounding must be one of {', '.join(ROUNDING)}, got {rounding!r}")
    return Recipe(name, check_precisions(graphs, where), block, str(raw.get("description", "")), rounding)


def load_recipe(recipe: str | Path) -> Recipe:
    """A built-in recipe by name, or a TOML file by path."""
    if isinstance(recipe, str) and recipe in BUILTIN:
        return BUILTIN[recipe]
    path = Path(recipe)
    if path.suffix != ".toml" or not path.is_file():
        raise QuantError(f"unknown recipe {str(recipe)!r}; built in: {', '.join(BUILTIN)}, or a path to a .toml file")
    raw = read_document(path, QuantError, f"fix the file, or use a built-in recipe: {', '.join(BUILTIN)}")
    return parse_recipe(raw, path.stem, str(path))
