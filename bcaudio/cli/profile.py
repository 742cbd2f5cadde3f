"""``bcaudio profile`` (measure, or ``compare`` saved reports) and ``bcaudio profiles`` (list device profiles).

The main parser calls ``add_parser(sub)``. Torch-free like the rest of the runtime.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bcaudio.atomic import write_json, write_text
from bcaudio.cli import validators as v
from bcaudio.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``profile`` (with its ``compare`` form) and ``profiles`` on the main parser's subcommands."""
    p = sub.add_parser("profile", help="measure voice-turn latency per stage on this device; "
                                       "`profile compare a.json b.json ...` puts reports side by side",
                       description="Run real voice turns and report where the time goes. "
                                   "Or: bcaudio profile compare a.json b.json [...] [--chart out.png]")
    p.add_argument("--model", type=v.input_folder, help="model package folder (from `bcaudio export`)")
    p.add_argument("--device-profile", default="auto",
                   help="shipped profile name, a .toml path, or `auto` (default: pick from this hardware)")
    p.add_argument("--input", type=v.input_file,
                   help="speech file for the user's turn (default: a sentence spoken by espeak-ng)")
    p.add_argument("--turns", type=v.int_range(1, 1000), default=3, help="measured turns, 1..1000 (default 3)")
    p.add_argument("--warmup", type=v.int_range(0, 100), default=1, help="unmeasured turns first (default 1)")
    p.add_argument("--seed", type=v.seed, default=0,
                   help="seed of the sampler and of every noise draw (same seed, same turn)")
    p.add_argument("--output", type=v.output_file(".json"), default=Path("profile-report.json"),
                   help="report JSON; the markdown and PNGs are written next to it (default profile-report.json)")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument("--live-prefill", action="store_true",
                   help="feed the input as `bcaudio chat` does: tokenized and prefilled in the profile's chunks "
                        "while spoken, the turn timed from end of speech (default: all of it at end of speech)")
    p.add_argument("--segment-frames", type=v.int_range(0, 500), default=0,
                   help="make every answer segment N audio frames (80 ms each), a chosen clause length: random "
                        "weights run every segment to the frame cap (40 in small, 500 published); 0: the model "
                        "decides (default)")
    modes = p.add_subparsers(dest="profile_command", metavar="compare")
    c = modes.add_parser("compare", help="side-by-side table and chart of saved reports")
    c.add_argument("reports", nargs="+", type=v.input_file, help="two or more report JSON files")
    c.add_argument("--chart", type=v.output_file(".png"), default=Path("profile-compare.png"),
                   help="comparison chart PNG (default profile-compare.png)")
    p.set_defaults(func=_profile)

    p = sub.add_parser("profiles", help="list the shipped device profiles; `--device-profile auto` says which fits")
    p.add_argument("--device-profile", help="also show one profile in full: a name, a .toml path, or `auto`")
    p.set_defaults(func=_profiles)


def _progress_printer() -> Callable[[str, bool], None]:
    """Live status on a terminal (one line rewritten in place); only the lasting lines in a log file."""
    live = sys.stderr.isatty()

    def show(message: str, done: bool) -> None:
        if live:
            sys.stderr.write("\r\x1b[2K" + message + ("\n" if done else ""))
            sys.stderr.flush()
        elif done:
            print(message, file=sys.stderr)

    return show


def _profile(args: argparse.Namespace) -> None:
    if args.profile_command == "compare":
        _compare(args.reports, Path(args.chart))
        return
    if not args.model:
        raise UserError("--model is required: bcaudio profile --model PKG [--device-profile NAME|auto|path]")
    from bcaudio.runtime.package.profiles import resolve_profile
    from bcaudio.runtime.profiling.profiler import Profiler, device_info, speech_input
    from bcaudio.runtime.profiling.report import build_report, metric_rows, to_markdown

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    from bcaudio.runtime.package.manifest import load_manifest

    rate = load_manifest(args.model, verify=False).model_config().frontend.sampling_rate
    with tempfile.TemporaryDirectory() as tmp:  # the input is read (and refused when bad) before the model loads
        audio, source = speech_input(args.input, rate, Path(tmp))
    profile = resolve_profile(args.device_profile, log)
    log(f"profiling {args.model} with device profile {profile.name}: {profile.session.provider}, "
        f"{profile.session.intra_op_threads or 'default'} threads, {profile.generation.flow_steps} flow steps")
    profiler = Profiler(args.model, profile, seed=args.seed, log=log, live_prefill=args.live_prefill,
                        segment_frames=args.segment_frames)
    mismatches = profiler.recipe_mismatches()
    if mismatches:
        log("note: the package's precisions differ from the profile's recipe (" + "; ".join(mismatches)
            + "); timings are for the package as built")
    log(f"input: {source} ({audio.size / rate:.2f} s)")
    measures = profiler.run(audio, args.turns, args.warmup, progress=_progress_printer())
    manifest = profiler.assistant.sessions.manifest
    report = build_report(measures, profile, device_info(profiler.assistant.sessions.providers), str(args.model),
                          {g: e.precision for g, e in manifest.graphs.items()}, mismatches, source, audio.size / rate,
                          args.warmup, args.seed, "bcaudio " + shlex.join(_argv_of(args)), args.live_prefill,
                          args.segment_frames)
    out = Path(args.output)
    if not args.no_charts:
        report["charts"] = _charts(report, out, log)
    write_json(out, report)
    md = out.with_suffix(".md")
    write_text(md, to_markdown(report))
    width = max(len(r[0]) for r in metric_rows(report))
    print(f"{'metric'.ljust(width)}  {'median':>9}  {'p90':>9}")
    for label, median, p90 in metric_rows(report):
        print(f"{label.ljust(width)}  {median:>9}  {p90:>9}")
    print("stages: " + ", ".join(f"{s} {x['share']:.0%}" for s, x in report["stages"].items()))
    print(f"VERDICT: {report['verdict']['line']}")
    print("wrote " + ", ".join(str(p) for p in [out, md, *report.get("charts", {}).values()]))


def _argv_of(args: argparse.Namespace) -> list[str]:
    """The command line rebuilt from the parsed options (defaults spelled out), so a report says how to redo it."""
    argv = ["profile", "--model", str(args.model), "--device-profile", args.device_profile, "--turns",
            str(args.turns), "--warmup", str(args.warmup), "--seed", str(args.seed), "--output", str(args.output)]
    return (argv + (["--input", str(args.input)] if args.input else []) + (["--no-charts"] if args.no_charts else [])
            + (["--live-prefill"] if args.live_prefill else [])
            + (["--segment-frames", str(args.segment_frames)] if args.segment_frames else []))


def _charts(report: dict, out: Path, log: Callable[[str], None]) -> dict[str, str]:
    """The timeline and stage charts next to the report; without matplotlib, one note and none."""
    from bcaudio.runtime.profiling.charts import ChartsUnavailable, stage_chart, timeline_chart

    try:
        return {"timeline": str(timeline_chart(report, out.with_name(out.stem + "-timeline.png"))),
                "stages": str(stage_chart(report, out.with_name(out.stem + "-stages.png")))}
    except ChartsUnavailable as exc:
        log(f"note: {exc}")
        return {}


def _compare(paths: list[str], chart: Path) -> None:
    from bcaudio.runtime.profiling.charts import ChartsUnavailable, compare_chart
    from bcaudio.runtime.profiling.report import comparability_notes, compare_table, load_report

    if len(paths) < 2:
        raise UserError("compare needs two or more reports: bcaudio profile compare a.json b.json")
    reports = [load_report(p) for p in paths]
    labels = [Path(p).stem for p in paths]
    if len(set(labels)) < len(labels):
        labels = [str(p) for p in paths]
    print(compare_table(reports, labels))
    for line in comparability_notes(reports, labels):
        print(f"warning: {line}")
    for label, report in zip(labels, reports, strict=True):
        print(f"{label}: {report['verdict']['line']}")
    try:
        print(f"wrote {compare_chart(reports, labels, chart)}")
    except ChartsUnavailable as exc:
        print(f"note: {exc}", file=sys.stderr)


def _profiles(args: argparse.Namespace) -> None:
    from bcaudio.runtime.package.profiles import load_profile, shipped_profiles

    rows = [("name", "provider", "threads", "flow steps", "end of turn", "felt latency", "RTF", "description")]
    for name in sorted(shipped_profiles()):
        p = load_profile(name)
        rows.append((name, p.session.provider, str(p.session.intra_op_threads or "auto"),
                     str(p.generation.flow_steps),
                     f"detector after {p.endpoint.turn_pause_ms} ms, else {p.endpoint.end_ms} ms"
                     if p.endpoint.turn_detector else f"hangover {p.endpoint.end_ms} ms",
                     f"<= {p.budget.felt_ms:g} ms", f"< {p.budget.rtf:g}",
                     p.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    if args.device_profile:
        from dataclasses import asdict

        from bcaudio.runtime.package.profiles import resolve_profile

        profile = resolve_profile(args.device_profile, print)
        print(f"\n{profile.name} ({profile.source})")
        for section in ("session", "generation", "endpoint", "budget", "match"):
            print(f"  {section}: {asdict(getattr(profile, section))}")
        print(f"  recipe: {profile.recipe}")
