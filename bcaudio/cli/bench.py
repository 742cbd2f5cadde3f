"""``bcaudio bench``: measure the decode loop's graphs against their peers; print a table, write the JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bcaudio.errors import UserError

VARIANTS = ("torch-fp32", "optimum-fp32", "optimum-int4", "genai-int4", "bcaudio-fp32", "bcaudio-int8",
            "bcaudio-int4")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {text!r}") from None


def _run(args: argparse.Namespace) -> None:
    from bcaudio.benchmarks.report import RESULTS_DIR, format_table, write_results
    from bcaudio.benchmarks.runner import BenchOptions, run_bench

    if not (args.preset or args.checkpoint or args.package):
        raise UserError("choose what to measure: --preset tiny|small, --checkpoint DIR or --package DIR")
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    opts = BenchOptions(
        preset=args.preset, checkpoint=args.checkpoint, package=args.package, workdir=args.workdir,
        contexts=_ints(args.contexts), iterations=args.iterations, warmup=args.warmup,
        prefill_repeats=args.prefill_repeats, threads=args.threads, bandwidth_mb=args.bandwidth_mb,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()), turns=args.turns,
        speech=args.input, device_profile=args.device_profile, reexport=args.reexport,
        first_text_tokens=args.first_text_tokens, accuracy_steps=args.accuracy_steps,
        sessions=_ints(args.sessions))
    result = run_bench(opts, progress=log)
    path = write_results(result, args.results_dir or RESULTS_DIR)
    log(f"results written to {path}")
    print(json.dumps(result, indent=1) if args.json else "\n" + format_table(result))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench``."""
    p = sub.add_parser("bench", help="LLM decode/prefill vs torch and optimum-onnx, roofline, audio frame, turn",
                       description="Measure, in one run on the same weights: LLM prefill and decode for torch eager, "
                                   "optimum-onnx's Qwen2 export (fp32, int4) and bcaudio's llm graphs (fp32, int8, "
                                   "int4); the memory-bandwidth roofline; the audio head and full-frame cost; time "
                                   "to first audio and RTF of a spoken turn. Missing inputs are made in --workdir "
                                   "once and reused.")
    p.add_argument("--preset", choices=("tiny", "small"), help="random checkpoint of this preset, made when missing")
    p.add_argument("--checkpoint", type=Path, help="checkpoint folder (instead of the preset's random one)")
    p.add_argument("--package", type=Path, help="fp32 model package (instead of exporting the checkpoint)")
    p.add_argument("--workdir", type=Path, help="where exports and quantized packages are cached "
                                                "(default: work/bench-PRESET)")
    p.add_argument("--reexport", action="store_true", help="export the checkpoint into --workdir again (after a change "
                                                           "to the exporters); the quantized packages follow")
    p.add_argument("--contexts", default="128,1024", help="context lengths for decode (default: 128,1024)")
    p.add_argument("--iterations", type=int, default=20, help="timed decode steps / head frames (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed series")
    p.add_argument("--prefill-repeats", type=int, default=2, help="timed prefills per context (median)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for every variant (0: one per core)")
    p.add_argument("--bandwidth-mb", type=int, default=512, help="array size of the bandwidth measurement")
    p.add_argument("--turns", type=int, default=1, help="measured spoken turns per bcaudio variant (0: none)")
    p.add_argument("--input", type=Path, help="speech for the turn (default: a sentence spoken by espeak-ng)")
    p.add_argument("--device-profile", default="auto", help="generation settings of the turn (flow steps, "
                                                            "prefill chunk); threads always come from --threads")
    p.add_argument("--first-text-tokens", type=int, default=0,
                   help="cap the turn's first text round at N tokens, as a trained model's first clause "
                        "(random weights run to spec's 50); 0: no cap")
    p.add_argument("--sessions", default="", help="comma-separated counts of conversations answering at once "
                                                  "(e.g. 1,2,4,8): decode steps batched vs separate (default: none)")
    p.add_argument("--accuracy-steps", type=int, default=32,
                   help="teacher-forced decode steps after the shortest context whose logits are compared with the "
                        "fp32 reference (relative L2, top-1 agreement)")
    p.add_argument("--results-dir", type=Path, help="folder for the JSON (default: benchmarks/results)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress goes to stderr)")
    p.set_defaults(func=_run)
