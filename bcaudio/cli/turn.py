"""``respond``, ``transcribe`` and ``speak`` on a model package: numpy + onnxruntime only, never torch."""

from __future__ import annotations

import argparse
import sys

from bcaudio.cli import validators as v
from bcaudio.errors import UserError

MAX_STREAM_CHUNK_FRAMES = 1000  # 80 s of audio per window: beyond it streaming is whole segments in all but name


def _runtime_turn(args: argparse.Namespace) -> None:
    """respond / transcribe / speak on a model package: numpy + onnxruntime only."""
    import json

    from bcaudio.cli.console import stream_to_console
    from bcaudio.runtime.audio.files import check_speech, load_audio
    from bcaudio.runtime.generation.assistant import VoiceAssistant
    from bcaudio.runtime.package.manifest import load_manifest
    from bcaudio.runtime.package.profiles import resolve_profile, stream_settings
    from bcaudio.runtime.package.sessions import SessionSettings

    output = getattr(args, "output", None)
    if getattr(args, "text_only", False) and output is not None:
        raise UserError(f"--text-only answers in text: drop --output {output} (no audio would be written)")

    def log(message: str) -> None:  # stdout carries only the answer (or the JSON)
        print(message, file=sys.stderr)

    audio = None  # read (and refused when bad) before the model is loaded
    if args.command == "speak" and not args.text.strip():
        raise UserError("--text is empty: give the words to speak, e.g. --text 'hello'")
    if args.command != "speak":
        rate = load_manifest(args.model, verify=False).model_config().frontend.sampling_rate
        audio = check_speech(load_audio(args.input, rate), lambda _: None)  # the clip warning comes once, later

    settings, flow_steps, context = SessionSettings(provider=args.provider, intra_op_threads=args.threads), None, None
    profile = None
    if args.device_profile:
        profile = resolve_profile(args.device_profile, log)
        settings = profile.session
        flow_steps, context = profile.generation.flow_steps, profile.generation.context_tokens
    stream = stream_settings(profile, getattr(args, "stream_chunk_frames", None))
    assistant = VoiceAssistant(args.model, None, settings=settings, seed=args.seed, flow_steps=flow_steps,
                               context_tokens=context,
                               stream=stream, log=log)
    if args.command == "speak":
        events = assistant.speak(args.text)
    else:
        if args.command == "transcribe":
            events = assistant.transcribe(audio, rate)
        elif args.text_only:
            events = assistant.respond_text(audio, rate)
        else:
            events = assistant.respond(audio, rate)
    out = sys.stderr if args.json else sys.stdout
    speech = args.command != "transcribe" and not getattr(args, "text_only", False)
    result = stream_to_console(events, assistant.cfg.generation.crossfade_samples, assistant.sample_rate,
                               output, out=out, audio=speech)
    if args.json:
        print(json.dumps({"text": result.text, "text_ids": result.text_ids, "stop": result.reason,
                          "segments": [c.tolist() for c in result.segment_codes()]}))


def add_parser(sub: argparse._SubParsersAction) -> None:
    for name, helptext in (("respond", "answer a spoken question with text and speech (ONNX Runtime, no torch)"),
                           ("transcribe", "speech to text with the ASR prompt"),
                           ("speak", "text to speech")):
        p = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:]
                           + ". The text goes to stdout as it is generated; statistics and progress go to stderr.")
        p.add_argument("--model", required=True, type=v.input_folder,
                       help="model package folder (from `bcaudio export`)")
        if name == "speak":
            p.add_argument("--text", required=True, help="the text to speak")
        else:
            p.add_argument("--input", required=True, type=v.input_file, help="speech file: any rate, mono or stereo")
        if name != "transcribe":
            p.add_argument("--output", type=v.output_file(".wav", ".flac"),
                           help="write the answer audio (24 kHz .wav or .flac; without it the audio is discarded)")
        if name == "respond":
            p.add_argument("--text-only", action="store_true", help="answer in text only (no --output)")
        p.add_argument("--device-profile", help="shipped profile name, a .toml path, or `auto` "
                                                "(sets provider, threads and flow steps)")
        if name != "transcribe":
            p.add_argument("--stream-chunk-frames", type=v.int_range(0, MAX_STREAM_CHUNK_FRAMES), default=None,
                           help="decode each segment in windows of N new frames while it is generated "
                                "(0: whole segments; default: the device profile's, else 0)")
        p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu",
                       help="onnxruntime execution provider (cuda falls back to cpu with one line)")
        p.add_argument("--threads", type=v.threads, default=0, help="intra-op threads (0: onnxruntime default)")
        p.add_argument("--seed", type=v.seed, default=0,
                       help="seed of the sampler and of every noise draw (same seed, same turn)")
        p.add_argument("--json", action="store_true", help="print the result as JSON (progress goes to stderr)")
        p.set_defaults(func=_runtime_turn)
