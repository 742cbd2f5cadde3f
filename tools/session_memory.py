"""Memory of each ONNX Runtime session of a model package when it opens, one child process per graph.

Why: at 7B the package's sessions together passed an 11 GB cap while opening (docs/real-scale.md); this says
which graph costs what, and what the session options change, without running a turn. Per graph: the file
bytes, the RSS after the session is open (what stays), the anonymous part of it (what the kernel cannot drop:
the rest is pages of memory-mapped weight files, resident only while memory is free), the peak RSS while
opening (what the machine must have), and the time to open. Options are ONNX Runtime session config entries, e.g.
``--config session.disable_prepacking=1``.

    python tools/session_memory.py PKG [--graphs llm,audio_head] [--config KEY=VALUE ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, time
import onnxruntime as ort
path, config = sys.argv[1], json.loads(sys.argv[2])

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

before, anon = status("VmRSS:"), status("RssAnon:")
opts = ort.SessionOptions()
opts.log_severity_level = 3
opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
for key, value in config.items():
    opts.add_session_config_entry(key, value)
start = time.perf_counter()
ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
print(json.dumps({"open_s": time.perf_counter() - start, "rss": status("VmRSS:") - before,
                  "anon": status("RssAnon:") - anon, "peak": status("VmHWM:") - before}))
"""


def graph_memory(package: Path, graph: str, config: dict[str, str]) -> dict[str, float]:
    """One graph's session opened alone in a child: bytes on disk, RSS kept (and its anonymous part), peak RSS,
    seconds to open."""
    manifest = json.loads((package / "manifest.json").read_text())
    entry = manifest["graphs"][graph]
    size = sum((package / rel).stat().st_size for rel in entry["sha256"])
    out = subprocess.run([sys.executable, "-c", _CHILD, str(package / entry["file"]), json.dumps(config)],
                         capture_output=True, text=True, check=True)
    return {"graph": graph, "precision": entry.get("precision", "fp32"), "file": size,
            **json.loads(out.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="model package folder (has manifest.json)")
    parser.add_argument("--graphs", help="comma-separated graphs (default: all in the manifest)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="ONNX Runtime session config entry, repeatable")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if not (args.package / "manifest.json").is_file():
        parser.error(f"{args.package} has no manifest.json; pass a model package folder")
    if any("=" not in c for c in args.config):
        parser.error("--config takes KEY=VALUE, e.g. session.disable_prepacking=1")
    config = dict(c.split("=", 1) for c in args.config)
    names = args.graphs.split(",") if args.graphs else list(json.loads(
        (args.package / "manifest.json").read_text())["graphs"])
    rows = []
    print(f"{'graph':16} {'precision':9} {'file GB':>8} {'RSS GB':>8} {'anon GB':>8} {'peak GB':>8} {'open s':>7}   "
          f"{config or ''}")
    for name in names:
        row = graph_memory(args.package, name, config)
        rows.append(row)
        print(f"{name:16} {row['precision']:9} {row['file'] / 1e9:8.2f} {row['rss'] / 1e9:8.2f} "
              f"{row['anon'] / 1e9:8.2f} {row['peak'] / 1e9:8.2f} {row['open_s']:7.1f}", flush=True)
    print(f"{'total':26} {sum(r['file'] for r in rows) / 1e9:8.2f} {sum(r['rss'] for r in rows) / 1e9:8.2f} "
          f"{sum(r['anon'] for r in rows) / 1e9:8.2f}")
    if args.json:
        args.json.write_text(json.dumps({"package": str(args.package), "config": config, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
