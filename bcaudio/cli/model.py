"""Commands on checkpoints, with the torch reference: init, info, generate, export, validate, demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from bcaudio.cli import validators as v
from bcaudio.errors import UserError
from bcaudio.presets import PRESETS
from bcaudio.quant.recipes import BUILTIN
from bcaudio.runtime.package.manifest import GRAPHS


def _init(args: argparse.Namespace) -> None:
    import torch

    from bcaudio.export.checkpoint import init_checkpoint
    from bcaudio.export.summary import print_summary
    from bcaudio.presets import get_preset

    v.check_overwrite(args.out, args.overwrite, "checkpoint")
    cfg = get_preset(args.preset, layers=args.layers)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    init_checkpoint(cfg, Path(args.out), seed=args.seed, dtype=dtype,
                    shard_bytes=int(args.shard_size_mb * 1024**2), progress=print, overwrite=args.overwrite)
    print_summary(Path(args.out))


def _info(args: argparse.Namespace) -> None:
    from bcaudio.export.summary import print_summary

    print_summary(Path(args.checkpoint))


def _generate(args: argparse.Namespace) -> None:
    if args.mode == "tts" and not (args.text or "").strip():
        raise UserError("--mode tts needs --text: give --text 'what to say'")
    if args.mode != "tts" and args.input is None:
        raise UserError(f"--mode {args.mode} answers speech: give --input in.wav")
    if args.mode in ("text", "asr") and args.output is not None:
        raise UserError(f"--mode {args.mode} answers in text only: drop --output (no audio would be written)")
    from bcaudio.export.reference_turn import run_reference_turn

    run_reference_turn(Path(args.checkpoint), mode=args.mode, input_wav=args.input, text=args.text,
                       output_wav=args.output, seed=args.seed, greedy=args.greedy)


def _export(args: argparse.Namespace) -> None:
    from bcaudio.export.package import export_package

    v.check_distinct(args.out, args.checkpoint, "checkpoint")
    v.check_overwrite(args.out, args.overwrite)
    export_package(args.checkpoint, args.out, graphs=args.graphs, opset=args.opset, llm_graph=args.llm_graph,
                   recipe=args.recipe, vocoder=args.vocoder, overwrite=args.overwrite)


def _validate(args: argparse.Namespace) -> None:
    from bcaudio.export.validate import format_table, reports_json, validate_package
    from bcaudio.runtime.audio.files import load_audio

    speech = load_audio(args.speech, 16000) if args.speech else None
    reports = validate_package(args.package, args.checkpoint, speech,
                               progress=(lambda _: None) if args.json else print)
    print(reports_json(reports) if args.json else format_table(reports))
    if not all(r.passed for r in reports):
        raise UserError("validation failed: a graph is past its tolerance (see the table)")


def _demo(args: argparse.Namespace) -> None:
    from bcaudio.demo import run_demo

    run_demo(args.workdir)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write a deterministic random checkpoint in the official layout")
    p.add_argument("--preset", required=True, choices=tuple(PRESETS), help="model shapes")
    p.add_argument("--out", required=True, type=v.output_folder, help="checkpoint folder to create")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint in --out (kept until the new one is complete)")
    p.add_argument("--seed", type=v.seed, default=0, help="seed of the random weights (same seed, same checkpoint)")
    p.add_argument("--layers", type=v.positive_int, default=None,
                   help="cut every transformer stack to at most N layers")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                   help="storage dtype (the official checkpoints are bfloat16)")
    p.add_argument("--shard-size-mb", type=v.float_range(0, 1e6, open_low=True), default=2048.0,
                   help="largest safetensors shard, MB")
    p.set_defaults(func=_init)

    p = sub.add_parser("info", help="summarize a checkpoint: preset, shapes, parameters per part")
    p.add_argument("checkpoint", type=v.input_folder, help="checkpoint folder (from `bcaudio init` or a download)")
    p.set_defaults(func=_info)

    p = sub.add_parser("generate", help="one turn with the torch reference model (the parity oracle)")
    p.add_argument("--checkpoint", required=True, type=v.input_folder, help="checkpoint folder")
    p.add_argument("--mode", choices=["respond", "text", "asr", "tts"], default="respond",
                   help="respond: speech in, text + speech out; text: text answer only; asr: transcribe; tts: speak")
    p.add_argument("--input", type=v.input_file, help="input speech (any rate, mono or stereo) for respond/text/asr")
    p.add_argument("--text", help="text to speak for tts")
    p.add_argument("--output", type=v.output_file(".wav", ".flac"), help="write the answer audio (24 kHz wav)")
    p.add_argument("--seed", type=v.seed, default=0,
                   help="seed of the sampler and of every noise draw (same seed, same turn)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding in every phase")
    p.set_defaults(func=_generate)

    p = sub.add_parser("export", help="split a checkpoint into ONNX graphs + manifest (a model package)")
    p.add_argument("--checkpoint", required=True, type=v.input_folder, help="checkpoint folder")
    p.add_argument("--out", required=True, type=v.output_folder, help="model package folder to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing package in --out (kept until the new one is complete and verified)")
    p.add_argument("--graphs", type=v.choice_list(GRAPHS), help=f"comma-separated subset of: {','.join(GRAPHS)} "
                                                                "(default: all)")
    p.add_argument("--opset", type=v.int_range(17, 21), default=17, help="ONNX opset of the exported graphs, 17..21")
    p.add_argument("--llm-graph", choices=("fast", "plain"), default="fast",
                   help="fast: ONNX Runtime fused operators with a shared KV buffer (default); plain: the torch "
                        "export (concatenating KV cache)")
    p.add_argument("--recipe", type=v.name_or_file(BUILTIN, ".toml"),
                   help="fp16 | int8 | int4 | mixed | file.toml: quantize each graph while it is written "
                        "(equal to export then `bcaudio quantize`, without an fp32 copy; default fp32)")
    p.add_argument("--vocoder", type=v.input_file,
                   help="HiFT state dict (hift.pt of the official code repository); default: hift.pt "
                        "or hift.safetensors beside the checkpoint")
    p.set_defaults(func=_export)

    p = sub.add_parser("validate", help="run every graph of a package against the torch reference")
    p.add_argument("package", type=v.input_folder, help="model package folder (from `bcaudio export`)")
    p.add_argument("--checkpoint", required=True, type=v.input_folder,
                   help="the checkpoint the package was exported from")
    p.add_argument("--speech", type=v.input_file,
                   help="speech wav for the audio tokenizer check (default: fixed noise)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON instead of a table")
    p.set_defaults(func=_validate)

    p = sub.add_parser("demo", help="the embedded default end to end (what `make demo` runs)")
    p.add_argument("--workdir", type=v.work_folder, default=Path("demo"),
                   help="folder for the checkpoint, package, question and reply")
    p.set_defaults(func=_demo)
