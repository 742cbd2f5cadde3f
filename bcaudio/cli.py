"""The ``bcaudio`` command. Subcommands import their package lazily: ``respond`` never pays for torch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bcaudio.errors import UserError

if TYPE_CHECKING:
    from bcaudio.runtime.profiles import DeviceProfile


def _init(args: argparse.Namespace) -> None:
    import torch

    from bcaudio.export.checkpoint import init_checkpoint
    from bcaudio.export.summary import print_summary
    from bcaudio.presets import get_preset

    cfg = get_preset(args.preset, layers=args.layers)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    init_checkpoint(cfg, Path(args.out), seed=args.seed, dtype=dtype,
                    shard_bytes=int(args.shard_size_mb * 1024**2), progress=print)
    print_summary(Path(args.out))


def _info(args: argparse.Namespace) -> None:
    from bcaudio.export.summary import print_summary

    print_summary(Path(args.checkpoint))


def _generate(args: argparse.Namespace) -> None:
    from bcaudio.export.reference_turn import run_reference_turn

    run_reference_turn(Path(args.checkpoint), mode=args.mode, input_wav=args.input, text=args.text,
                       output_wav=args.output, seed=args.seed, greedy=args.greedy)


def _export(args: argparse.Namespace) -> None:
    from bcaudio.export.package import export_package

    graphs = args.graphs.split(",") if args.graphs else None
    export_package(Path(args.checkpoint), Path(args.out), graphs=graphs, opset=args.opset, llm_graph=args.llm_graph)


def _validate(args: argparse.Namespace) -> None:
    from bcaudio.export.validate import format_table, reports_json, validate_package
    from bcaudio.runtime.audio_io import load_audio

    speech = load_audio(args.speech, 16000) if args.speech else None
    reports = validate_package(Path(args.package), Path(args.checkpoint), speech,
                               progress=(lambda _: None) if args.json else print)
    print(reports_json(reports) if args.json else format_table(reports))
    if not all(r.passed for r in reports):
        raise UserError("validation failed: a graph is past its tolerance (see the table)")


def _runtime_turn(args: argparse.Namespace) -> None:
    """respond / transcribe / speak on a model package: numpy + onnxruntime only."""
    import json

    from bcaudio.runtime.assistant import VoiceAssistant
    from bcaudio.runtime.audio_io import load_audio
    from bcaudio.runtime.console import stream_to_console
    from bcaudio.runtime.profiles import stream_settings
    from bcaudio.runtime.sessions import SessionSettings

    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    settings, flow_steps, context = SessionSettings(provider=args.provider, intra_op_threads=args.threads), None, None
    profile = None
    if args.device_profile:
        profile = resolve_profile(args.device_profile, log)
        settings = profile.session
        flow_steps, context = profile.generation.flow_steps, profile.generation.context_tokens
    stream = stream_settings(profile, getattr(args, "stream_chunk_frames", None))
    assistant = VoiceAssistant(args.model, settings, seed=args.seed, flow_steps=flow_steps, context_tokens=context,
                               stream=stream, log=log)
    if args.command == "speak":
        events = assistant.speak(args.text)
    else:
        audio = load_audio(args.input, assistant.cfg.frontend.sampling_rate)
        rate = assistant.cfg.frontend.sampling_rate
        if args.command == "transcribe":
            events = assistant.transcribe(audio, rate)
        elif args.text_only:
            events = assistant.respond_text(audio, rate)
        else:
            events = assistant.respond(audio, rate)
    out = sys.stderr if args.json else sys.stdout
    result = stream_to_console(events, assistant.cfg.generation.crossfade_samples, assistant.sample_rate,
                               getattr(args, "output", None), out=out)
    if args.json:
        print(json.dumps({"text": result.text, "text_ids": result.text_ids, "stop": result.reason,
                          "segments": [c.tolist() for c in result.segment_codes()]}))


def resolve_profile(name: str, log: Callable[[str], None]) -> DeviceProfile:
    """A device profile by name or path; ``auto`` picks from the detected hardware and says which."""
    from bcaudio.runtime.profiles import detect_device, load_profile, pick_profile

    if name != "auto":
        return load_profile(name)
    profile = pick_profile(detect_device())
    log(f"device profile: {profile.name} (auto: {profile.description})")
    return profile


def _demo(args: argparse.Namespace) -> None:
    from bcaudio.demo import run_demo

    run_demo(Path(args.workdir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcaudio", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a deterministic random checkpoint in the official layout")
    p.add_argument("--preset", required=True, help="tiny | small | baichuan-audio-7b")
    p.add_argument("--out", required=True, help="checkpoint folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=None, help="cut every transformer stack to at most N layers")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                   help="storage dtype (the official checkpoints are bfloat16)")
    p.add_argument("--shard-size-mb", type=float, default=2048.0, help="largest safetensors shard")
    p.set_defaults(func=_init)

    p = sub.add_parser("info", help="summarize a checkpoint: preset, shapes, parameters per part")
    p.add_argument("checkpoint")
    p.set_defaults(func=_info)

    p = sub.add_parser("generate", help="one turn with the torch reference model (the parity oracle)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--mode", choices=["respond", "text", "asr", "tts"], default="respond")
    p.add_argument("--input", help="input speech (any rate, mono or stereo) for respond/text/asr")
    p.add_argument("--text", help="text to speak for tts")
    p.add_argument("--output", help="write the answer audio (24 kHz wav)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--greedy", action="store_true", help="greedy decoding in every phase")
    p.set_defaults(func=_generate)

    p = sub.add_parser("export", help="split a checkpoint into ONNX graphs + manifest (a model package)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="model package folder to write")
    p.add_argument("--graphs", help="comma-separated subset of: audio_tokenizer,llm,audio_head,flow_prenet,"
                                    "flow_estimator,vocoder (default: all)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--llm-graph", choices=("fast", "plain"), default="fast",
                   help="fast: ONNX Runtime fused operators with a shared KV buffer (default); plain: the torch "
                        "export (concatenating KV cache)")
    p.set_defaults(func=_export)

    p = sub.add_parser("validate", help="run every graph of a package against the torch reference")
    p.add_argument("package")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--speech", help="speech wav for the audio tokenizer check (default: fixed noise)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_validate)

    for name, helptext in (("respond", "answer a spoken question with text and speech (ONNX Runtime, no torch)"),
                           ("transcribe", "speech to text with the ASR prompt"),
                           ("speak", "text to speech")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True, help="model package folder (from `bcaudio export`)")
        if name == "speak":
            p.add_argument("--text", required=True)
        else:
            p.add_argument("--input", required=True, help="speech file: any rate, mono or stereo")
        if name != "transcribe":
            p.add_argument("--output", help="write the answer audio (24 kHz wav)")
        if name == "respond":
            p.add_argument("--text-only", action="store_true", help="answer in text only")
        p.add_argument("--device-profile", help="shipped profile name, a .toml path, or `auto` "
                                                "(sets provider, threads and flow steps)")
        if name != "transcribe":
            p.add_argument("--stream-chunk-frames", type=int, default=None,
                           help="decode each segment in windows of N new frames while it is generated "
                                "(0: whole segments; default: the device profile's, else 0)")
        p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
        p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime default)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", action="store_true", help="print the result as JSON (progress goes to stderr)")
        p.set_defaults(func=_runtime_turn)

    p = sub.add_parser("demo", help="the embedded default end to end (what `make demo` runs)")
    p.add_argument("--workdir", default="demo")
    p.set_defaults(func=_demo)

    from bcaudio.runtime.profile_cli import add_parser as add_profile_parsers

    add_profile_parsers(sub)
    from bcaudio.runtime.chat_cli import add_parser as add_chat_parsers

    add_chat_parsers(sub)
    try:
        from bcaudio.quant.cli import add_parser as add_quant_parser
    except ImportError:  # runtime-only install: no onnx, no `quantize`
        pass
    else:
        add_quant_parser(sub)
    try:
        from bcaudio.benchmarks.cli import add_parser as add_bench_parser
    except ImportError:  # runtime-only install: no benchmarks
        pass
    else:
        add_bench_parser(sub)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    from bcaudio.config import ConfigError

    errors: list[type[BaseException]] = [UserError, ConfigError, FileNotFoundError]
    try:
        from bcaudio.export.checkpoint import CheckpointError

        errors.append(CheckpointError)
    except ImportError:  # runtime-only install: no torch, no export errors to catch
        pass
    from bcaudio.runtime.audio_devices import AudioDeviceError
    from bcaudio.runtime.audio_io import AudioInputError
    from bcaudio.runtime.manifest import ManifestError
    from bcaudio.runtime.profiles import ProfileError
    from bcaudio.runtime.vad import VadModelError

    errors += [AudioInputError, ManifestError, ProfileError, AudioDeviceError, VadModelError]
    try:
        from bcaudio.quant.recipes import QuantError

        errors.append(QuantError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _known_errors()):
            print(f"bcaudio {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
