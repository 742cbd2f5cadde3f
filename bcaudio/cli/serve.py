"""``bcaudio serve``: the model package behind a WebSocket protocol and the kiosk page, for many clients at once."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bcaudio.cli import validators as v
from bcaudio.errors import UserError

MAX_SESSIONS = 256
MIN_TOKEN_CHARS = 16


def check_network(args: argparse.Namespace) -> None:
    """TLS files, token and bind address: the same rule for ``serve`` and ``fleet``."""
    from bcaudio.runtime.serve.security import bind_problem

    if bool(args.certfile) != bool(args.keyfile):
        raise UserError("--certfile and --keyfile go together (the certificate and its private key)")
    if args.token is not None and len(args.token) < MIN_TOKEN_CHARS:
        raise UserError(f"--token must be at least {MIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 16`)")
    problem = bind_problem(args.host, bool(args.certfile), args.token)
    if problem:
        raise UserError(problem)


def check_args(args: argparse.Namespace) -> None:
    """What needs more than one option, refused before the model is loaded (single values are range-checked where
    they are parsed, bcaudio.cli.validators)."""
    check_network(args)
    check_package(args.model)


def check_package(model: str, note: str = "") -> None:
    """``--model`` names a package folder, checked before a model (or a Ray cluster) is started for it."""
    if not (Path(model) / "manifest.json").is_file():
        raise UserError(f"--model {model}: not a model package (no manifest.json); make one with "
                        f"`bcaudio export`{note}")


def _serve(args: argparse.Namespace) -> None:
    check_args(args)
    try:
        import uvicorn

        from bcaudio.runtime.serve.app import REALTIME_PATH, ServeOptions, create_app
        from bcaudio.runtime.serve.logs import setup_logging
        from bcaudio.runtime.serve.model import SharedModel
        from bcaudio.runtime.serve.protocol import Limits
    except ImportError as exc:
        raise UserError(f"the server needs the serve extra ({exc.name} is missing): pip install 'bcaudio[serve]'"
                        ) from None
    from bcaudio.runtime.audio.turn_detector import TurnModelError
    from bcaudio.runtime.audio.vad import VadModelError

    log = setup_logging(args.log_format)
    try:
        model = SharedModel(args.model, args.device_profile, log=log.info, batching=args.batching)
    except (VadModelError, TurnModelError) as exc:
        raise UserError(str(exc)) from None
    limits = Limits(max_message_bytes=args.max_message_bytes, max_turn_seconds=args.max_turn_seconds,
                    idle_timeout=args.idle_timeout)
    options = ServeOptions(max_sessions=args.max_sessions, token=args.token, allowed_origins=args.allow_origin,
                           limits=limits)
    app = create_app(model, options)
    scheme = "https" if args.certfile else "http"
    log.info("serving %s on %s://%s:%d/ (WebSocket %s, at most %d sessions)", args.model, scheme, args.host,
             args.port, REALTIME_PATH, args.max_sessions)
    config = uvicorn.Config(app, host=args.host, port=args.port, ssl_certfile=args.certfile, ssl_keyfile=args.keyfile,
                            ws="websockets-sansio", ws_max_size=4 * args.max_message_bytes, log_config=None,
                            access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run()
    finally:
        model.close()


def add_parser(sub: Any) -> None:
    """Register ``serve`` on the ``bcaudio`` subcommand parser."""
    p = sub.add_parser("serve", help="WebSocket voice server and kiosk page: many clients on one loaded model")
    p.add_argument("--model", required=True, type=v.input_folder, help="model package folder (from `bcaudio export`)")
    p.add_argument("--device-profile", default="auto",
                   help="shipped profile name, a .toml path, or `auto` (default: the one that fits this machine)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs --certfile/--keyfile and --token)")
    p.add_argument("--port", type=v.PORT, default=8765, help="TCP port (default 8765)")
    p.add_argument("--max-sessions", type=v.int_range(1, MAX_SESSIONS), default=8,
                   help=f"concurrent sessions, 1..{MAX_SESSIONS}; one more is refused (default 8)")
    p.add_argument("--idle-timeout", type=v.IDLE_SECONDS, default=300.0,
                   help="close a session after this many seconds without a message (default 300)")
    p.add_argument("--max-turn-seconds", type=v.float_range(1, 300), default=30.0,
                   help="audio of one utterance; longer is ended there and answered (default 30)")
    p.add_argument("--max-message-bytes", type=v.int_range(4096, 16 * 1024 * 1024), default=256 * 1024,
                   help="largest client message (default 262144: 8 s of audio per append)")
    p.add_argument("--certfile", type=v.input_file, help="TLS certificate (PEM): serve https/wss")
    p.add_argument("--keyfile", type=v.input_file, help="TLS private key (PEM)")
    p.add_argument("--token", default=os.environ.get("BCAUDIO_TOKEN"),
                   help="clients must send it (?token=... or Authorization: Bearer ...); default $BCAUDIO_TOKEN, "
                        "which keeps it out of the process list")
    p.add_argument("--allow-origin", action="append", default=[],
                   help="a web origin (https://host:port) allowed besides this server's own; repeatable")
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=None,
                   help="step concurrent conversations' llm and audio head as one batch (default: the device "
                        "profile's generation.batching, on)")
    p.add_argument("--log-format", choices=("plain", "json"), default="plain", help="log lines as text or JSON")
    p.set_defaults(func=_serve)

