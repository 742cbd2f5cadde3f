"""The model package contract: ``manifest.json`` beside the ONNX graphs.

The runtime trusts only this file. Loading checks its schema and, on request,
every file's sha256, so a corrupt or hand-edited package is refused with a line
that names the problem instead of failing deep inside onnxruntime.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bcaudio.atomic import write_text
from bcaudio.config import ConfigError, ModelConfig
from bcaudio.digests import sha256_file
from bcaudio.documents import read_document

MANIFEST = "manifest.json"
FORMAT_VERSION = 3  # 3: the vocoder's NSF source takes harmonic phases and a carried phase, returns frame_phase
GRAPHS = ("audio_tokenizer", "llm", "audio_head", "flow_prenet", "flow_estimator", "vocoder")
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")


class ManifestError(ValueError):
    """A package the runtime must not load; the message names the file or field and the fix."""


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | str]


@dataclass
class GraphEntry:
    file: str
    sha256: dict[str, str]
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"
    recipe: str = "fp32"

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]


@dataclass
class Manifest:
    config: dict[str, Any]
    graphs: dict[str, GraphEntry]
    tokenizer: dict[str, str]
    source: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    recipe: str = "fp32"
    format_version: int = FORMAT_VERSION

    def model_config(self) -> ModelConfig:
        try:
            return ModelConfig.from_dict(self.config)
        except ConfigError as exc:
            raise ManifestError(f"{MANIFEST}: bad config section: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def save(self, package: Path) -> None:
        write_text(package / MANIFEST, self.to_json())

    def files(self) -> dict[str, str]:
        """Every file of the package -> its sha256."""
        out = dict(self.tokenizer)
        for graph in self.graphs.values():
            out.update(graph.sha256)
        return out


def _require(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in raw:
        raise ManifestError(f"{MANIFEST}: {where} lacks '{key}'; re-export the package with `bcaudio export`")
    if not isinstance(raw[key], kind):
        raise ManifestError(f"{MANIFEST}: {where}.{key} has the wrong type ({type(raw[key]).__name__})")
    return raw[key]


def _tensor(raw: Any, where: str) -> TensorSpec:
    if not isinstance(raw, dict):
        raise ManifestError(f"{MANIFEST}: {where} must be an object")
    name = _require(raw, "name", str, where)
    dtype = _require(raw, "dtype", str, where)
    shape = _require(raw, "shape", list, where)
    if dtype not in DTYPES:
        raise ManifestError(f"{MANIFEST}: {where} has unknown dtype {dtype!r}")
    if not all(isinstance(d, int | str) for d in shape):
        raise ManifestError(f"{MANIFEST}: {where} shape entries must be ints or axis names")
    return TensorSpec(name, dtype, shape)


def _graph(raw: Any, name: str) -> GraphEntry:
    where = f"graphs.{name}"
    if not isinstance(raw, dict):
        raise ManifestError(f"{MANIFEST}: {where} must be an object")
    sha = _require(raw, "sha256", dict, where)
    return GraphEntry(
        file=_require(raw, "file", str, where),
        sha256={str(k): str(v) for k, v in sha.items()},
        opset=_require(raw, "opset", int, where),
        inputs=[_tensor(t, f"{where}.inputs[{i}]") for i, t in enumerate(_require(raw, "inputs", list, where))],
        outputs=[_tensor(t, f"{where}.outputs[{i}]") for i, t in enumerate(_require(raw, "outputs", list, where))],
        precision=str(raw.get("precision", "fp32")),
        recipe=str(raw.get("recipe", "fp32")),
    )


def parse_manifest(raw: Any) -> Manifest:
    if not isinstance(raw, dict):
        raise ManifestError(f"{MANIFEST}: top level must be an object")
    version = _require(raw, "format_version", int, "manifest")
    if version != FORMAT_VERSION:
        raise ManifestError(f"{MANIFEST}: format version {version}, this bcaudio reads {FORMAT_VERSION}; "
                            "re-export the package with this bcaudio version")
    graphs = _require(raw, "graphs", dict, "manifest")
    unknown = sorted(set(graphs) - set(GRAPHS))
    if unknown:
        raise ManifestError(f"{MANIFEST}: unknown graph(s) {unknown}; known: {', '.join(GRAPHS)}")
    manifest = Manifest(
        config=_require(raw, "config", dict, "manifest"),
        graphs={name: _graph(g, name) for name, g in graphs.items()},
        tokenizer={str(k): str(v) for k, v in _require(raw, "tokenizer", dict, "manifest").items()},
        source=dict(raw.get("source", {})),
        versions=dict(raw.get("versions", {})),
        recipe=str(raw.get("recipe", "fp32")),
        format_version=version,
    )
    manifest.model_config()
    return manifest


def load_manifest(package: Path, verify: bool = True, graphs: tuple[str, ...] | None = None) -> Manifest:
    """Read and check ``package/manifest.json``; with ``verify``, hash every file it names (or those of ``graphs``)."""
    package = Path(package)
    path = package / MANIFEST
    if not path.exists():
        raise ManifestError(f"{package}: no {MANIFEST}; is this a model package? Make one with `bcaudio export`")
    raw = read_document(path, ManifestError, "re-export the package with `bcaudio export`")
    manifest = parse_manifest(raw)
    if verify:
        files = dict(manifest.tokenizer)
        for name, graph in manifest.graphs.items():
            if graphs is None or name in graphs:
                files.update(graph.sha256)
        for rel, expected in files.items():
            file = package / rel
            if not file.exists():
                raise ManifestError(f"{package}: {rel} is missing; copy the whole package folder")
            if sha256_file(file) != expected:
                raise ManifestError(f"{package}: {rel} does not match its sha256 in {MANIFEST} "
                                    "(corrupt or modified); re-copy or re-export the package")
    return manifest
