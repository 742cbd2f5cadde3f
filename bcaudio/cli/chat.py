"""``bcaudio chat`` (a live spoken conversation) and ``bcaudio devices`` (what audio and providers exist)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from bcaudio.atomic import append_line
from bcaudio.cli import validators as v
from bcaudio.errors import UserError

RETRY_SECONDS = 2.0


class ChatView:
    """Line-based terminal view: state changes, the assistant's text as it comes, one summary per turn."""

    def __init__(self, out: TextIO = sys.stdout, transcript: Path | None = None) -> None:
        self.out, self.transcript = out, transcript
        self._lock = threading.Lock()
        self._in_text = False

    def __call__(self, event: Any) -> None:
        from bcaudio.runtime.live.conversation import AssistantText, Notice, PhaseChange, TurnDone

        with self._lock:
            if isinstance(event, AssistantText):
                if not self._in_text:
                    self.out.write("assistant: ")
                    self._in_text = True
                self.out.write(event.text)
            else:
                self._end_text()
                if isinstance(event, PhaseChange):
                    self.out.write(f"[{event.phase.value}]\n")
                elif isinstance(event, Notice):
                    self.out.write(f"! {event.message}\n")
                elif isinstance(event, TurnDone):
                    self._turn(event.report)
            self.out.flush()

    def _end_text(self) -> None:
        if self._in_text:
            self.out.write("\n")
            self._in_text = False

    def _turn(self, report: Any) -> None:
        latency = "n/a" if report.latency is None else f"{report.latency * 1000:.0f} ms"
        felt = "n/a" if report.felt is None else f"{report.felt * 1000:.0f} ms"
        cut = (f", interrupted after {report.played_segments}/{report.segments} segment(s)" if report.interrupted
               else "")
        self.out.write(f"turn {report.index}: you spoke {report.user_seconds:.1f} s; felt latency (your last voiced "
                       f"sound -> first answer sound) {felt}; end of turn ({report.ended_by}) -> first audio "
                       f"{latency}{cut}\n")
        if self.transcript is not None:
            append_line(self.transcript, json.dumps({
                "turn": report.index, "user_seconds": round(report.user_seconds, 3), "assistant": report.text,
                "latency_s": report.latency, "felt_latency_s": report.felt, "ended_by": report.ended_by,
                "interrupted": report.interrupted, "played_segments": report.played_segments,
                "segments": report.segments}, ensure_ascii=False))


def _devices(args: argparse.Namespace) -> None:
    from bcaudio.runtime.audio.devices import devices_report

    print(devices_report())


def _chat(args: argparse.Namespace) -> None:
    import dataclasses

    from bcaudio.runtime.audio.devices import AudioDeviceError, DeviceStreams, SpeakerOutput
    from bcaudio.runtime.audio.turn_detector import TurnModelError
    from bcaudio.runtime.audio.vad import EndpointSettings, VadModelError
    from bcaudio.runtime.generation.assistant import VoiceAssistant
    from bcaudio.runtime.live.conversation import LiveSession, LiveSettings
    from bcaudio.runtime.package.profiles import resolve_profile, stream_settings
    from bcaudio.runtime.package.sessions import SessionSettings

    if args.output_wav and not args.input_wav:
        raise UserError("--output-wav records a file-driven session: give --input-wav too")
    if args.input_wav and args.push_to_talk:
        raise UserError("--push-to-talk needs a keyboard; a file-driven session uses the VAD")
    view = ChatView(transcript=Path(args.transcript) if args.transcript else None)
    def log(message: str) -> None:
        print(message, file=view.out)

    defaults = LiveSettings()
    settings, flow_steps, context, profile = SessionSettings(), None, None, None
    chunk_ms, left_ms = defaults.prefill_chunk_ms, defaults.tokenize_left_context_ms
    if args.device_profile:
        profile = resolve_profile(args.device_profile, log)
        settings, flow_steps, gen = profile.session, profile.generation.flow_steps, profile.generation
        context, chunk_ms, left_ms = gen.context_tokens, gen.prefill_chunk_ms, gen.tokenize_left_context_ms
    stream = stream_settings(profile, args.stream_chunk_frames)
    endpoint = dataclasses.replace(profile.endpoint if profile else EndpointSettings(),
                                   **{k: v for k, v in (("threshold", args.vad_threshold), ("start_ms", args.start_ms),
                                                        ("end_ms", args.end_ms)) if v is not None})
    # a threshold below the release level would end speech on the frames that start it
    endpoint = dataclasses.replace(endpoint, release=min(endpoint.release, 0.7 * endpoint.threshold))
    if args.turn_detector is not None:
        endpoint = dataclasses.replace(endpoint, turn_detector=args.turn_detector == "on")
    live = LiveSettings(endpoint,
                        prefill_chunk_ms=args.prefill_chunk_ms or chunk_ms,
                        tokenize_left_context_ms=left_ms if args.tokenize_left_context_ms is None
                        else args.tokenize_left_context_ms,
                        push_to_talk=args.push_to_talk, barge_in=not args.no_barge_in)
    recording = None
    if args.input_wav:  # read (and refused when bad) before the model is loaded
        from bcaudio.runtime.audio.devices import MIC_RATE
        from bcaudio.runtime.audio.files import load_audio

        recording = load_audio(args.input_wav, MIC_RATE)
    assistant = VoiceAssistant(args.model, None, settings=settings, seed=args.seed, flow_steps=flow_steps,
                               context_tokens=context,
                               stream=stream, log=log)
    if args.history:
        assistant.loop.gen = dataclasses.replace(assistant.loop.gen, history=args.history)
    try:
        if recording is not None:
            _chat_files(args, assistant, live, view, recording)
            return
        rate = _wait_for_output(args.output_device, assistant.sample_rate, view)
    except (AudioDeviceError, VadModelError, TurnModelError) as exc:
        raise UserError(str(exc)) from None
    if rate is None:
        return
    speaker = SpeakerOutput(assistant.sample_rate, rate)
    try:
        session = LiveSession(assistant, speaker, live, ui=view)
    except (VadModelError, TurnModelError) as exc:
        raise UserError(str(exc)) from None
    streams = DeviceStreams(session.mic, speaker, args.input_device, args.output_device)
    _chat_live(session, streams, view, AudioDeviceError)


def _wait_for_output(device: str | None, source_rate: int, view: ChatView) -> int | None:
    """The output rate once an output device exists: with none yet, one message and a retry every 2 s (a kiosk
    may start before its USB speaker); None after Ctrl-C. A missing sounddevice or PortAudio is an error."""
    from bcaudio.runtime.audio.devices import AudioBackendMissing, AudioDeviceError, DeviceStreams

    reported = ""
    try:
        while True:
            try:
                return DeviceStreams.output_rate(device, source_rate)
            except AudioBackendMissing:
                raise
            except AudioDeviceError as exc:
                if str(exc) != reported:
                    print(f"! {exc}; retrying every {RETRY_SECONDS:.0f} s (Ctrl-C to quit)", file=view.out)
                    reported = str(exc)
                time.sleep(RETRY_SECONDS)
    except KeyboardInterrupt:
        print("\nbye", file=view.out)
        return None


def _chat_files(args: argparse.Namespace, assistant: Any, live: Any, view: ChatView, audio: Any) -> None:
    """Headless: the recording (16 kHz) goes through the microphone callback; the speaker's output is written
    aligned to it.

    Ctrl-C stops feeding (``--realtime`` runs take as long as the recording): what was played so far
    is still written, so a long file can be cut short without losing the run.
    """
    import numpy as np

    from bcaudio.runtime.audio.devices import BLOCK_MS, MIC_RATE, SpeakerOutput
    from bcaudio.runtime.audio.files import save_audio
    from bcaudio.runtime.live.conversation import LiveSession, drive_from_audio

    rate = MIC_RATE
    speaker = SpeakerOutput(assistant.sample_rate)
    session = LiveSession(assistant, speaker, live, ui=view)
    played: list[np.ndarray] = []
    stopped = False
    try:
        drive_from_audio(session, audio, rate, realtime=args.realtime, out=played)
    except KeyboardInterrupt:
        stopped = True
        print(f"\nstopped by Ctrl-C after {len(played) * BLOCK_MS / 1000:.1f} s of the input", file=view.out)
    finally:
        session.close()
        assistant.close()  # its decode worker
    out = np.concatenate(played) if played else np.zeros(0, np.float32)
    if args.output_wav:
        save_audio(args.output_wav, out, speaker.rate)
        print(f"wrote {args.output_wav} ({out.size / speaker.rate:.1f} s, aligned with the input"
              f"{', cut short' if stopped else ''})", file=view.out)
    if stopped:
        print("bye", file=view.out)


def _chat_live(session: Any, streams: Any, view: ChatView, device_error: type[Exception]) -> None:
    """Run until Ctrl-C; a missing, busy or lost device is reported once and retried, the conversation kept."""
    if session.settings.push_to_talk:
        print("push-to-talk: press Enter to start speaking, Enter again to finish", file=view.out)
        threading.Thread(target=push_to_talk_keys, args=(session, sys.stdin), daemon=True).start()
    print("Ctrl-C to quit", file=view.out)
    last_error = ""
    try:
        while True:
            if not streams.is_open:
                try:
                    streams.open()
                    if last_error:
                        print("audio device back; listening", file=view.out)
                    last_error = ""
                except device_error as exc:
                    if str(exc) != last_error:
                        print(f"! {exc}; retrying every {RETRY_SECONDS:.0f} s", file=view.out)
                    last_error = str(exc)
                    time.sleep(RETRY_SECONDS)
                    continue
            if streams.lost.wait(0.1):
                last_error = "audio device lost"
                print("! audio device lost: an unfinished turn is dropped (an answer keeps what was played); "
                      "reopening", file=view.out)
                session.interrupt()
                streams.close()
    except KeyboardInterrupt:
        print("\nbye", file=view.out)
    finally:
        streams.close()
        session.close()
        session.assistant.close()  # its decode worker


def push_to_talk_keys(session: Any, keys: Iterable[str]) -> None:
    """Each line (Enter) of ``keys`` toggles: the first presses the talk button, the next releases it."""
    talking = False
    for _ in keys:
        if talking:
            session.release()
        else:
            session.press()
        talking = not talking


def add_parser(sub: Any) -> None:
    """Register ``chat`` and ``devices`` on the ``bcaudio`` subcommand parser."""
    p = sub.add_parser("devices", help="list audio input/output devices and onnxruntime providers",
                       description="List audio input/output devices and onnxruntime providers.")
    p.set_defaults(func=_devices)

    p = sub.add_parser("chat", help="live spoken conversation: microphone in, speaker out, barge-in",
                       description="Live spoken conversation on microphone and speaker (or --input-wav / "
                                   "--output-wav). With no audio device yet it waits, retrying every 2 s.")
    p.add_argument("--model", required=True, type=v.input_folder, help="model package folder (from `bcaudio export`)")
    p.add_argument("--device-profile", default="auto",
                   help="shipped profile name, a .toml path, or `auto` (default: the one that fits this machine); "
                        "sets threads, flow steps, segment streaming and the incremental prefill chunk")
    p.add_argument("--input-device", help="PortAudio input device: index or name part (see `bcaudio devices`)")
    p.add_argument("--output-device", help="PortAudio output device: index or name part")
    p.add_argument("--push-to-talk", action="store_true", help="Enter starts and ends each utterance (no VAD)")
    p.add_argument("--no-barge-in", action="store_true",
                   help="do not stop the answer when speech is heard (open speakers without echo cancellation)")
    p.add_argument("--transcript", type=v.output_file(".jsonl", ".json", ".txt"),
                   help="append one JSON line per turn to this file (.jsonl)")
    p.add_argument("--input-wav", type=v.input_file, help="drive the session from this recording instead of a "
                                                          "microphone")
    p.add_argument("--output-wav", type=v.output_file(".wav", ".flac"),
                   help="with --input-wav: write what the speaker played, aligned with the input")
    p.add_argument("--realtime", action="store_true", help="with --input-wav: pace the file in real time "
                                                           "(default: as fast as the model allows)")
    p.add_argument("--vad-threshold", type=v.threshold,
                   help="Silero speech probability threshold, between 0 and 1 exclusive (default: the device "
                        "profile's [endpoint], else 0.5)")
    p.add_argument("--start-ms", type=v.duration_ms(10_000),
                   help="speech needed to start an utterance, 0..10000 ms (default: profile's, else 96)")
    p.add_argument("--end-ms", type=v.duration_ms(10_000),
                   help="silence that ends an utterance, the hangover, 0..10000 ms (default: profile's, else 640)")
    p.add_argument("--turn-detector", choices=("on", "off"),
                   help="Smart Turn judges each short pause; 'finished' ends the turn before the hangover "
                        "(default: the device profile's endpoint.turn_detector)")
    p.add_argument("--prefill-chunk-ms", type=v.duration_ms(30_000), default=0,
                   help="incremental prefill chunk, ms (default: the device profile's, else 640)")
    p.add_argument("--tokenize-left-context-ms", type=v.duration_ms(30_000), default=None,
                   help="audio before each prefill chunk that its tokenization sees again "
                        "(default: the device profile's, else 640)")
    p.add_argument("--stream-chunk-frames", type=v.int_range(0, 1000), default=None,
                   help="decode each answer segment in windows of N new frames while it is generated "
                        "(0: whole segments; default: the device profile's, else 0)")
    p.add_argument("--history", choices=["published", "live"], default=None,
                   help="what later turns see of an answer: as the published demo rebuilds it (the package "
                        "default, rebuilt while the answer plays) or the KV cache as generated")
    p.add_argument("--seed", type=v.seed, default=0,
                   help="seed of the sampler and of every noise draw (same seed, same turn)")
    p.set_defaults(func=_chat)
