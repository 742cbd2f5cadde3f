"""``bcaudio fleet``: ``bcaudio serve``'s page and protocol on a Ray Serve cluster, many replicas of one package."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from bcaudio.cli import validators as v
from bcaudio.cli.serve import MAX_SESSIONS, check_network, check_package
from bcaudio.errors import UserError

MAX_REPLICAS = 1024


def check_args(args: argparse.Namespace) -> None:
    """What needs more than one option, refused before Ray starts (single values are range-checked where they are
    parsed, bcaudio.cli.validators)."""
    if not args.min_replicas <= args.max_replicas:
        raise UserError(f"need 1 <= --min-replicas <= --max-replicas <= {MAX_REPLICAS}, got {args.min_replicas} "
                        f"and {args.max_replicas}")
    if not args.target_sessions <= args.sessions_per_replica:
        raise UserError(f"--target-sessions must be in (0, --sessions-per-replica {args.sessions_per_replica}], got "
                        f"{args.target_sessions:g}")
    check_network(args)
    check_package(args.model, " (on a multi-node cluster the path must exist on every node)")


def _fleet(args: argparse.Namespace) -> None:
    check_args(args)
    try:
        from bcaudio.runtime.fleet.deploy import FleetOptions, replica_status, start
        from bcaudio.runtime.serve.protocol import Limits
    except ImportError as exc:
        raise UserError(f"`bcaudio fleet` needs the fleet extra ({exc.name} is missing): pip install "
                        "'bcaudio[fleet]'") from None
    options = FleetOptions(package=str(Path(args.model).resolve()), device_profile=args.device_profile,
                           replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                           sessions_per_replica=args.sessions_per_replica, target_sessions=args.target_sessions,
                           cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                           token=args.token, allowed_origins=args.allow_origin,
                           limits=Limits(idle_timeout=args.idle_timeout))
    start(options, args.host, args.port, address=args.address, certfile=args.certfile, keyfile=args.keyfile)
    scheme = "https" if args.certfile else "http"
    print(f"fleet of {args.model} on {scheme}://{args.host}:{args.port}/ (replicas: {replica_status()}, at most "
          f"{options.capacity()} sessions); Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        from ray import serve

        serve.shutdown()


def add_parser(sub: Any) -> None:
    """Register ``fleet`` on the ``bcaudio`` subcommand parser."""
    p = sub.add_parser("fleet", help="serve the kiosk page and protocol from many replicas on a Ray cluster",
                       description="Deploys `bcaudio serve`'s application on Ray Serve: each replica loads the "
                       "package once; a conversation stays on its replica; new ones go to the least loaded.")
    p.add_argument("--model", required=True, help="model package folder (the same path on every node)")
    p.add_argument("--device-profile", default="auto", help="profile every replica uses (default: auto, per node)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (`auto`: the one `ray start` began here; default: start a local one)")
    p.add_argument("--host", default="127.0.0.1", help="address Ray Serve's proxy binds (default 127.0.0.1)")
    p.add_argument("--port", type=v.PORT, default=8765, help="TCP port of the proxy (default 8765)")
    p.add_argument("--replicas", type=v.int_range(1, MAX_REPLICAS), default=None,
                   help="a fixed replica count (default: autoscale)")
    p.add_argument("--min-replicas", type=v.int_range(1, MAX_REPLICAS), default=1, help="autoscaling floor (default 1)")
    p.add_argument("--max-replicas", type=v.int_range(1, MAX_REPLICAS), default=4,
                   help="autoscaling ceiling (default 4)")
    p.add_argument("--sessions-per-replica", type=v.int_range(1, MAX_SESSIONS), default=8,
                   help="conversations one replica holds (default 8: what `bcaudio serve --max-sessions` holds)")
    p.add_argument("--target-sessions", type=v.float_range(0, MAX_SESSIONS, open_low=True), default=4.0,
                   help="autoscaling aims at this many conversations per replica (default 4)")
    p.add_argument("--cpus-per-replica", type=v.float_range(0, 1024, open_low=True), default=1.0,
                   help="CPUs Ray reserves per replica (default 1)")
    p.add_argument("--gpus-per-replica", type=v.float_range(0, 64), default=0.0,
                   help="GPUs per replica (default 0; 1 puts each replica on its own GPU, with a CUDA profile)")
    p.add_argument("--certfile", type=v.input_file, help="TLS certificate (PEM): the proxy serves https/wss")
    p.add_argument("--keyfile", type=v.input_file, help="TLS private key (PEM)")
    p.add_argument("--idle-timeout", type=v.IDLE_SECONDS, default=300.0,
                   help="close a session after this many seconds without a message (default 300)")
    p.add_argument("--token", default=os.environ.get("BCAUDIO_TOKEN"),
                   help="clients must send it (?token=... or Authorization: Bearer ...); default $BCAUDIO_TOKEN")
    p.add_argument("--allow-origin", action="append", default=[],
                   help="a web origin allowed besides the fleet's own; repeatable")
    p.set_defaults(func=_fleet)
