"""ONNX Runtime sessions for a model package, with provider choice and an honest fallback line."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from bcaudio.config import ModelConfig
from bcaudio.machine import cores, max_threads
from bcaudio.runtime.package.manifest import Manifest, ManifestError, load_manifest

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
DECODER_GRAPHS = ("flow_prenet", "flow_estimator", "vocoder")  # codes -> waveform (``SessionSettings.decoder_threads``)


@dataclass
class SessionSettings:
    """What a device profile decides about sessions."""

    provider: str = "cpu"
    intra_op_threads: int = 0  # 0: onnxruntime's default (one per physical core)
    # The flow and vocoder graphs' threads (0: intra_op_threads). With the decode overlapped with the llm and
    # head steps (generation.stream_overlap_decode) the two run at once and may share the cores differently.
    decoder_threads: int = 0
    # The audio head's threads (0: intra_op_threads). Its runs are short (eight a frame), so a second thread buys
    # less wall time than the CPU time its hand-offs take from the decode beside it; whether that shows in a whole
    # turn is the box's to say (docs/benchmarks.md, "Session 10": on 2 cores it did not).
    head_threads: int = 0
    graph_optimization: str = "all"
    memory_arena: bool = True
    # Idle intra-op threads may spin for work. Each graph has its own pool, so in a voice turn the pools
    # of the graphs not running would spin on the cores the running one needs: on 2 cores spinning made a
    # turn markedly slower (docs/quantization-choices.md, "Sessions"). On for a graph timed alone.
    spin_wait: bool = False

    def validate(self) -> None:
        for key in ("intra_op_threads", "decoder_threads", "head_threads"):
            if not 0 <= getattr(self, key) <= max_threads():
                raise ManifestError(f"{key} {getattr(self, key)} is out of range: this machine has {cores()} "
                                    f"core(s); use 0 (one per core) or 1..{max_threads()}")
        if self.provider not in PROVIDERS:
            raise ManifestError(f"unknown provider {self.provider!r}; choose one of {', '.join(PROVIDERS)}")
        if self.graph_optimization not in _OPT_LEVELS:
            raise ManifestError(f"graph_optimization must be one of {', '.join(_OPT_LEVELS)}")


_OPT_LEVELS = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
               "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
               "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
               "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def resolve_providers(provider: str, log: Callable[[str], None]) -> list[str]:
    """The provider list to ask for; CUDA falls back to CPU with one log line when unavailable."""
    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted == "CUDAExecutionProvider" and wanted not in available:
        log("CUDA execution provider not available in this onnxruntime build "
            f"({', '.join(available)}); falling back to CPU. Install bcaudio[gpu] on a CUDA machine.")
        return ["CPUExecutionProvider"]
    return [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])


class PackageSessions:
    """One InferenceSession per graph of a package (sha256-verified on load)."""

    def __init__(self, package: Path, settings: SessionSettings | None = None, graphs: Iterable[str] | None = None,
                 verify: bool = True, log: Callable[[str], None] = print) -> None:
        self.package = Path(package)
        self.settings = settings or SessionSettings()
        self.settings.validate()
        names = tuple(graphs) if graphs is not None else None
        self.manifest: Manifest = load_manifest(self.package, verify=verify, graphs=names)
        self.cfg: ModelConfig = self.manifest.model_config()
        self.log = log
        self.providers = resolve_providers(self.settings.provider, log)
        missing = [g for g in (names or ()) if g not in self.manifest.graphs]
        if missing:
            raise ManifestError(f"{self.package}: graph(s) {missing} not in this package; export them with "
                                f"`bcaudio export --graphs {','.join(missing)}`")
        self.sessions = {name: self._open(name) for name in (names or self.manifest.graphs)}
        # (graph, start, end) in perf_counter seconds for every run: the profiler's raw material
        self.run_observers: list[Callable[[str, float, float], None]] = []

    def _open(self, name: str) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = _OPT_LEVELS[self.settings.graph_optimization]
        opts.enable_cpu_mem_arena = self.settings.memory_arena
        opts.log_severity_level = 3
        threads = self.settings.intra_op_threads
        if name in DECODER_GRAPHS and self.settings.decoder_threads:
            threads = self.settings.decoder_threads
        if name == "audio_head" and self.settings.head_threads:
            threads = self.settings.head_threads
        if threads:
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.settings.spin_wait else "0")
        entry = self.manifest.graphs[name]
        path = self.package / entry.file
        try:
            return ort.InferenceSession(str(path), opts, providers=self.providers)
        except (ort.capi.onnxruntime_pybind11_state.InvalidProtobuf, ort.capi.onnxruntime_pybind11_state.Fail,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as exc:
            # onnxruntime refuses an external-data file that is a symbolic link or has several hard links for
            # weights inside If branches (the audio head's), though it follows a symbolic link for the main graph's
            links = [rel for rel in entry.sha256 if rel != entry.file and ((self.package / rel).is_symlink()
                                                                         or (self.package / rel).stat().st_nlink > 1)]
            fix = (f"{', '.join(links)} is a link (symbolic, or one of several hard links), which onnxruntime "
                   "refuses here; copy the file instead" if links else "re-export the package")
            raise ManifestError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:160]}); "
                                f"{fix}") from None

    def __getitem__(self, name: str) -> ort.InferenceSession:
        if name not in self.sessions:
            raise ManifestError(f"{self.package}: graph {name} is not in this package (it has "
                                f"{', '.join(self.sessions)}); export it with `bcaudio export --graphs ...,{name}`")
        return self.sessions[name]

    @property
    def device(self) -> str:
        """Where graph outputs live when bound to the device: ``cuda`` or ``cpu``."""
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def notify(self, name: str, start: float, end: float) -> None:
        """Report a run of ``name`` to the observers (for runs made outside ``run``, e.g. with IO binding)."""
        for observe in self.run_observers:
            observe(name, start, end)

    def run(self, name: str, feeds: dict, outputs: Sequence[str] | None = None,
            options: ort.RunOptions | None = None) -> list:
        start = time.perf_counter()
        result = self[name].run(outputs, feeds, options)
        self.notify(name, start, time.perf_counter())
        return result
