"""``bcaudio quantize PKG --recipe NAME|file.toml --out PKG2 [--json]``: quantize, then measure against the source."""

from __future__ import annotations

import argparse
import sys

from bcaudio.cli import validators as v
from bcaudio.quant.recipes import BUILTIN, QuantError


def _run(args: argparse.Namespace) -> None:
    # imported here: onnxruntime.quantization is slow to import and every other command would pay for it
    from bcaudio.quant.accuracy import accuracy_report
    from bcaudio.quant.package import quantize_package

    # with --json, stdout carries only the report; progress goes to stderr
    progress = (lambda m: print(m, file=sys.stderr)) if args.json else print
    v.check_distinct(args.out, args.package, "source package")
    v.check_overwrite(args.out, args.overwrite)
    quantize_package(args.package, args.recipe, args.out, progress=progress, overwrite=args.overwrite)
    progress("accuracy vs the fp32 source:")
    report = accuracy_report(args.out, progress=progress)
    print(report.to_json() if args.json else "\n" + report.table())
    if not report.passed:
        failed = [g.graph for g in report.graphs if not g.passed]
        raise QuantError(f"{args.out}: {', '.join(failed)} out of tolerance for recipe {report.recipe} "
                         f"(see {args.out / 'accuracy.md'})")


def _table(args: argparse.Namespace) -> None:
    from bcaudio.quant.table import quantize_table

    command = "bcaudio quantize-table " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["quantize-table"] else ""
    quantize_table(args.package, [r for r in args.recipes.split(",") if r], args.workdir, args.out, args.threads,
                   args.context, args.keep, command)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``quantize``; the handler raises QuantError (a ValueError) when a graph is out of tolerance."""
    p = sub.add_parser("quantize", help="make an fp16/int8/int4 package from an fp32 one, with an accuracy report",
                       description="Quantize a model package by recipe, then compare it with its fp32 source; the "
                                   "report is printed and saved as accuracy.json + accuracy.md in the new package.")
    p.add_argument("package", type=v.input_folder, help="fp32 model package (from `bcaudio export`)")
    p.add_argument("--recipe", default="mixed",
                   help=f"{' | '.join(BUILTIN)} | path to a .toml recipe (default: mixed, the CPU default)")
    p.add_argument("--out", type=v.output_folder, required=True, help="folder for the quantized package")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing package in --out (kept until the new one is complete)")
    p.add_argument("--json", action="store_true", help="print the accuracy report as JSON")
    p.set_defaults(func=_run)

    p = sub.add_parser("quantize-table", help="quantize by each recipe, then tabulate size, accuracy and CPU speed",
                       description="For each recipe: quantize the fp32 package (one at a time), run the accuracy "
                                   "report and time llm decode and the audio head on this CPU; writes a markdown "
                                   "table and the same figures as JSON next to it.")
    p.add_argument("package", type=v.input_folder, help="fp32 model package")
    p.add_argument("--recipes", default=",".join(BUILTIN), help="comma-separated recipes or .toml paths")
    p.add_argument("--workdir", type=v.work_folder, required=True, help="where the quantized packages are written")
    p.add_argument("--out", type=v.output_file(".md"), required=True,
                   help="markdown file (.md); the JSON goes next to it")
    p.add_argument("--threads", type=v.threads, default=2, help="intra-op threads for the timing (default 2)")
    p.add_argument("--context", type=v.int_range(1, 32768), default=128,
                   help="past positions of the timed decode step (default 128)")
    p.add_argument("--keep", action="store_true", help="keep the quantized packages in --workdir")
    p.set_defaults(func=_table)
