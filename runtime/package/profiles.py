"""Device profiles: which provider, threads, recipe, solver steps and chunk sizes suit a device kind.

Profiles are TOML (``device_profiles/*.toml`` ship with bcaudio; a user may pass a path).
Loading is strict: an unknown key, a wrong type or an unknown graph or precision is one
line naming the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from bcaudio.config import StreamSettings
from bcaudio.documents import read_document
from bcaudio.runtime.audio.vad import EndpointSettings
from bcaudio.runtime.package.manifest import GRAPHS
from bcaudio.runtime.package.sessions import PROVIDERS, SessionSettings

PRECISIONS = ("fp32", "fp16", "int8", "int4")


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file, the key and the fix."""


@dataclass
class GenerationSettings:
    flow_steps: int = 10
    stream_chunk_frames: int = 8  # 0: decode whole segments (see bcaudio.config.StreamSettings)
    stream_first_chunk_frames: int = 0  # 0: stream_chunk_frames
    stream_left_context_frames: int = 6
    stream_chunk_growth: float = 1.0  # > 1: each window after the second this many times the one before
    stream_max_chunk_frames: int = 0  # the growth's cap (0: none)
    stream_overlap_decode: bool = False  # decode a window on its own thread while the next one's frames are made
    stream_first_flow_steps: int = 0  # a segment's first streamed window's Euler steps (0: flow_steps)
    prefill_chunk_ms: int = 640
    tokenize_left_context_ms: int = 640  # audio before each prefill chunk that the tokenizer sees again
    context_tokens: int = 4096
    batching: bool = True  # serve: the llm and audio-head steps of concurrent conversations run as one batch

    def stream(self) -> StreamSettings:
        return StreamSettings(self.stream_chunk_frames, self.stream_first_chunk_frames,
                              self.stream_left_context_frames, growth=self.stream_chunk_growth,
                              max_chunk_frames=self.stream_max_chunk_frames,
                              overlap_decode=self.stream_overlap_decode,
                              first_flow_steps=self.stream_first_flow_steps)


@dataclass
class Budget:
    """``felt_ms``: last voiced sample of the user's speech -> first answer sample out (what a person waits)."""

    felt_ms: float = 1000.0
    rtf: float = 1.0


@dataclass
class Match:
    """What hardware a profile is for, used by ``--device-profile auto``."""

    min_cores: int = 0
    max_cores: int = 1 << 16
    gpu: bool = False
    gpu_name: str = ""
    isa: list[str] = field(default_factory=list)


@dataclass
class DeviceProfile:
    name: str
    description: str
    session: SessionSettings
    recipe: dict[str, str]
    generation: GenerationSettings
    budget: Budget
    match: Match
    source: str = ""
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)


def _typed(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
    defaults = cls()
    for key, value in raw.items():
        want = type(getattr(defaults, key))
        ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok or (want is int and isinstance(value, bool)):
            raise ProfileError(f"{where}.{key}: expected {want.__name__}, got {type(value).__name__} ({value!r})")
    return cls(**raw)


def parse_profile(raw: dict[str, Any], name: str, source: str = "") -> DeviceProfile:
    where = source or name
    allowed = {"description", "match", "session", "recipe", "generation", "budget", "endpoint"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ProfileError(f"{where}: unknown section(s) {unknown}; known: {', '.join(sorted(allowed))}")
    session = _typed(SessionSettings, raw.get("session", {}), f"{where}: session")
    if session.provider not in PROVIDERS:
        raise ProfileError(f"{where}: session.provider {session.provider!r}; choose one of {', '.join(PROVIDERS)}")
    recipe = raw.get("recipe", {})
    for graph, precision in recipe.items():
        if graph not in GRAPHS:
            raise ProfileError(f"{where}: recipe names unknown graph {graph!r}; graphs: {', '.join(GRAPHS)}")
        if precision not in PRECISIONS:
            raise ProfileError(f"{where}: recipe.{graph} = {precision!r}; precisions: {', '.join(PRECISIONS)}")
    profile = DeviceProfile(
        name=name, description=str(raw.get("description", "")), session=session, recipe=dict(recipe),
        generation=_typed(GenerationSettings, raw.get("generation", {}), f"{where}: generation"),
        budget=_typed(Budget, raw.get("budget", {}), f"{where}: budget"),
        match=_typed(Match, raw.get("match", {}), f"{where}: match"), source=source,
        endpoint=_typed(EndpointSettings, raw.get("endpoint", {}), f"{where}: endpoint"))
    ep = profile.endpoint
    if not (0 < ep.release <= ep.threshold < 1 and 0 < ep.turn_threshold < 1) \
            or min(ep.start_ms, ep.end_ms, ep.turn_pause_ms) < 1 or min(ep.pre_roll_ms, ep.turn_min_ms) < 0:
        raise ProfileError(f"{where}: endpoint needs 0 < release <= threshold < 1, 0 < turn_threshold < 1, "
                           "start_ms, end_ms and turn_pause_ms >= 1, pre_roll_ms and turn_min_ms >= 0")
    gen = profile.generation
    if gen.flow_steps < 1 or min(gen.stream_chunk_frames, gen.stream_first_chunk_frames) < 0 \
            or gen.stream_left_context_frames < 1:
        raise ProfileError(f"{where}: generation.flow_steps and stream_left_context_frames must be >= 1, "
                           "stream_chunk_frames and stream_first_chunk_frames >= 0 (0 decodes whole segments)")
    if not 0 <= gen.stream_first_flow_steps <= gen.flow_steps:
        raise ProfileError(f"{where}: generation.stream_first_flow_steps = {gen.stream_first_flow_steps}; set it "
                           f"to 1 .. flow_steps ({gen.flow_steps}), or 0 or leave it out for flow_steps")
    if not 1.0 <= gen.stream_chunk_growth <= 4.0 or gen.stream_max_chunk_frames < 0:
        raise ProfileError(f"{where}: generation.stream_chunk_growth must be in [1, 4] (1: windows of "
                           "stream_chunk_frames) and stream_max_chunk_frames >= 0 (0: no cap)")
    if profile.generation.prefill_chunk_ms < 80 or profile.generation.tokenize_left_context_ms < 0:
        raise ProfileError(f"{where}: generation.prefill_chunk_ms must be >= 80 (one audio code) and "
                           "tokenize_left_context_ms >= 0")
    return profile


def stream_settings(profile: DeviceProfile | None, chunk_frames: int | None) -> StreamSettings | None:
    """The profile's segment streaming with a ``--stream-chunk-frames`` over it; None leaves the package's
    generation settings (whole segments, as the reference decodes them)."""
    if chunk_frames is None:
        return profile.generation.stream() if profile else None
    if chunk_frames < 0:
        raise ProfileError(f"--stream-chunk-frames must be >= 0 (0 decodes whole segments), got {chunk_frames}")
    base = profile.generation.stream() if profile else StreamSettings()
    return dataclasses.replace(base, chunk_frames=chunk_frames)


def shipped_profiles() -> dict[str, Path]:
    folder = resources.files("bcaudio.device_profiles")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def load_profile(name_or_path: str) -> DeviceProfile:
    """A shipped profile by name, or a user's TOML file by path."""
    shipped = shipped_profiles()
    path = shipped.get(name_or_path, Path(name_or_path))
    if not path.exists():
        raise ProfileError(f"no device profile {name_or_path!r}; shipped: {', '.join(sorted(shipped))}, "
                           "or pass a path to a .toml file")
    raw = read_document(path, ProfileError, "fix the file, or use a shipped profile (`bcaudio profiles` lists them)",
                        kind="TOML")
    return parse_profile(raw, path.stem, str(path))


@dataclass
class DeviceInfo:
    cores: int
    isa: list[str]
    gpu_name: str

    @property
    def gpu(self) -> bool:
        return bool(self.gpu_name)

    def describe(self) -> str:
        """What was detected, in words: "2 cores, AVX-512 VNNI, no GPU" (the flags a profile can match on)."""
        flags = set(self.isa)
        isa = next((label for flag, label in ISA_WORDS if flag in flags), "no SIMD flags read")
        gpu = f"GPU {self.gpu_name}" if self.gpu else "no GPU"
        return f"{self.cores} core{'s' * (self.cores != 1)}, {isa}, {gpu}"


# The most telling CPU feature first: int8 dot products, then vector width.
ISA_WORDS = (("amx_int8", "AMX int8"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI (no AVX-512)"),
             ("avx512f", "AVX-512 without VNNI"), ("avx2", "AVX2, no VNNI"), ("asimddp", "Arm dot product"),
             ("asimd", "Arm NEON"))


def detect_device() -> DeviceInfo:
    """Cores, CPU feature flags and the CUDA device name (when the CUDA provider is usable)."""
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    return DeviceInfo(cores=os.cpu_count() or 1, isa=flags, gpu_name=_cuda_name())


def _cuda_name() -> str:
    import shutil
    import subprocess

    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers() or shutil.which("nvidia-smi") is None:
        return ""
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=10)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def pick_profile(device: DeviceInfo) -> DeviceProfile:
    """The shipped profile whose ``match`` fits best: GPU name, then ISA, then core range."""
    best, best_score = None, -1
    for name in sorted(shipped_profiles()):
        profile = load_profile(name)
        m = profile.match
        if m.gpu != device.gpu or not (m.min_cores <= device.cores <= m.max_cores):
            continue
        if m.gpu_name and m.gpu_name.lower() not in device.gpu_name.lower():
            continue
        if any(flag not in device.isa for flag in m.isa):
            continue
        score = 4 * bool(m.gpu_name) + 2 * len(m.isa) + (m.max_cores - m.min_cores < 1 << 15)
        if score > best_score:
            best, best_score = profile, score
    if best is None:
        best = load_profile("datacenter-h100" if device.gpu else "cpu-2core")
    return best


def resolve_profile(name: str, log: Callable[[str], None]) -> DeviceProfile:
    """A device profile by name or path; ``auto`` picks from the detected hardware and says which."""
    if name != "auto":
        return load_profile(name)
    device = detect_device()
    profile = pick_profile(device)
    log(f"device profile: {profile.name} (auto: this machine has {device.describe()}; profile: {profile.description})")
    return profile
