"""``bcaudio bench``: measure the decode loop's graphs against their peers; print a table, write the JSON."""

from __future__ import annotations

import argparse
import json
import sys

from bcaudio.cli import validators as v
from bcaudio.errors import UserError

VARIANTS = ("torch-fp32", "optimum-fp32", "optimum-int4", "genai-int4", "bcaudio-fp32", "bcaudio-int8",
            "bcaudio-int4")


def _run(args: argparse.Namespace) -> None:
    from bcaudio.benchmarks.report import format_table, write_results
    from bcaudio.benchmarks.runner import BenchOptions, default_workdir, run_bench

    if not (args.preset or args.checkpoint or args.package):
        raise UserError("choose what to measure: --preset tiny|small, --checkpoint DIR or --package DIR")
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    opts = BenchOptions(
        preset=args.preset, checkpoint=args.checkpoint, package=args.package, workdir=args.workdir,
        contexts=args.contexts, iterations=args.iterations, warmup=args.warmup,
        prefill_repeats=args.prefill_repeats, threads=args.threads, bandwidth_mb=args.bandwidth_mb,
        variants=tuple(args.variants), turns=args.turns,
        speech=args.input, device_profile=args.device_profile, reexport=args.reexport,
        first_text_tokens=args.first_text_tokens, segment_frames=args.segment_frames,
        accuracy_steps=args.accuracy_steps,
        sessions=args.sessions)
    results = args.results_dir or (args.workdir or default_workdir(args.preset)) / "results"
    result = run_bench(opts, progress=log)
    path = write_results(result, results)
    log(f"results written to {path}")
    print(json.dumps(result, indent=1) if args.json else "\n" + format_table(result))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench``."""
    p = sub.add_parser("bench", help="LLM decode/prefill vs torch and optimum-onnx, roofline, audio frame, turn",
                       description="Measure, in one run on the same weights: LLM prefill and decode for torch eager, "
                                   "optimum-onnx's Qwen2 export (fp32, int4) and bcaudio's llm graphs (fp32, int8, "
                                   "int4); the memory-bandwidth roofline; the audio head and full-frame cost; time "
                                   "to first audio and RTF of a spoken turn. Missing inputs are made in --workdir "
                                   "once and reused. Progress goes to stderr with --json.")
    p.add_argument("--preset", choices=("tiny", "small"), help="random checkpoint of this preset, made when missing")
    p.add_argument("--checkpoint", type=v.input_folder, help="checkpoint folder (instead of the preset's random one)")
    p.add_argument("--package", type=v.input_folder, help="fp32 model package (instead of exporting the checkpoint)")
    p.add_argument("--workdir", type=v.work_folder, help="where exports, quantized packages and results go "
                                                         "(default: work/bench-PRESET in the current folder)")
    p.add_argument("--reexport", action="store_true", help="export the checkpoint into --workdir again (after a change "
                                                           "to the exporters); the quantized packages follow")
    p.add_argument("--contexts", type=v.int_list(8, 32768), default=(128, 1024),
                   help="context lengths for decode, each 8..32768 (default: 128,1024)")
    p.add_argument("--iterations", type=v.int_range(1, 100_000), default=20,
                   help="timed decode steps / head frames (median; default 20)")
    p.add_argument("--warmup", type=v.int_range(0, 10_000), default=3,
                   help="untimed steps before each timed series (default 3)")
    p.add_argument("--prefill-repeats", type=v.int_range(1, 1000), default=2,
                   help="timed prefills per context (median; default 2)")
    p.add_argument("--variants", type=v.choice_list(VARIANTS), default=list(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)")
    p.add_argument("--threads", type=v.threads, default=0, help="intra-op threads for every variant (0: one per core)")
    p.add_argument("--bandwidth-mb", type=v.memory_mb(16), default=512,
                   help="array size of the bandwidth measurement, MB (default 512)")
    p.add_argument("--turns", type=v.int_range(0, 1000), default=1,
                   help="measured spoken turns per bcaudio variant (0: none; default 1)")
    p.add_argument("--input", type=v.input_file, help="speech for the turn (default: a sentence spoken by espeak-ng)")
    p.add_argument("--device-profile", default="auto", help="generation settings of the turn (flow steps, "
                                                            "prefill chunk); threads always come from --threads")
    p.add_argument("--first-text-tokens", type=v.int_range(0, 10_000), default=0,
                   help="cap the turn's first text round at N tokens, as a trained model's first clause "
                        "(random weights run to spec's 50); 0: no cap")
    p.add_argument("--segment-frames", type=v.int_range(0, 500), default=0,
                   help="make every answer segment of the turn N audio frames, a chosen clause length (random weights "
                        "run every segment to the frame cap: 40 in small, 500 published); 0: the model decides")
    p.add_argument("--sessions", type=v.int_list(1, 64), default=(),
                   help="comma-separated counts of conversations answering at once (e.g. 1,2,4,8), each 1..64: "
                        "decode steps batched vs separate (default: none)")
    p.add_argument("--accuracy-steps", type=v.int_range(1, 10_000), default=32,
                   help="teacher-forced decode steps after the shortest context whose logits are compared with the "
                        "fp32 reference (relative L2, top-1 agreement)")
    p.add_argument("--results-dir", type=v.work_folder, help="folder for the JSON (default: WORKDIR/results)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress goes to stderr)")
    p.set_defaults(func=_run)
