"""``bcaudio quantize PKG --recipe NAME|file.toml --out PKG2 [--json]``: quantize, then measure against the source."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bcaudio.quant.recipes import BUILTIN, QuantError


def _run(args: argparse.Namespace) -> None:
    # imported here: onnxruntime.quantization is slow to import and every other command would pay for it
    from bcaudio.quant.accuracy import accuracy_report
    from bcaudio.quant.package import quantize_package

    # with --json, stdout carries only the report; progress goes to stderr
    progress = (lambda m: print(m, file=sys.stderr)) if args.json else print
    quantize_package(args.package, args.recipe, args.out, progress=progress)
    progress("accuracy vs the fp32 source:")
    report = accuracy_report(args.out, progress=progress)
    print(report.to_json() if args.json else "\n" + report.table())
    if not report.passed:
        failed = [g.graph for g in report.graphs if not g.passed]
        raise QuantError(f"{args.out}: {', '.join(failed)} out of tolerance for recipe {report.recipe} "
                         f"(see {args.out / 'accuracy.md'})")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``quantize``; the handler raises QuantError (a ValueError) when a graph is out of tolerance."""
    p = sub.add_parser("quantize", help="make an fp16/int8/int4 package from an fp32 one, with an accuracy report",
                       description="Quantize a model package by recipe, then compare it with its fp32 source; the "
                                   "report is printed and saved as accuracy.json + accuracy.md in the new package.")
    p.add_argument("package", type=Path, help="fp32 model package (from `bcaudio export`)")
    p.add_argument("--recipe", default="mixed",
                   help=f"{' | '.join(BUILTIN)} | path to a .toml recipe (default: mixed, the CPU default)")
    p.add_argument("--out", type=Path, required=True, help="folder for the quantized package")
    p.add_argument("--json", action="store_true", help="print the accuracy report as JSON")
    p.set_defaults(func=_run)
