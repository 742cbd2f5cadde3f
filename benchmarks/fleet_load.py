"""Fleet benchmark: first audio p50 / p90 and turns per minute with 1 and then 2 replicas, at N clients.

``python -m bcaudio.benchmarks.fleet_load --model PKG --replicas 1,2 --sessions 4 --turns 3`` starts a local
Ray cluster, deploys the fleet once per replica count (each replica reserving ``--cpus-per-replica``) and
runs the same load as ``benchmarks/serve_load.py`` through the fleet's ingress.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bcaudio.benchmarks.serve_load import free_port, question_pcm16, run_load, summarize


def main(argv: list[str] | None = None) -> None:
    import ray
    from ray import serve

    from bcaudio.atomic import write_json
    from bcaudio.cli import validators as v
    from bcaudio.runtime.fleet.deploy import FleetOptions, start, wait_running

    p = v.OneLineParser(prog="python -m bcaudio.benchmarks.fleet_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=v.input_folder)
    p.add_argument("--device-profile", default="cpu-2core")
    p.add_argument("--replicas", type=v.int_list(1, 64), default=(1, 2))
    p.add_argument("--sessions", type=v.int_range(1, 256), default=4)
    p.add_argument("--turns", type=v.int_range(1, 1000), default=3)
    p.add_argument("--cpus-per-replica", type=v.float_range(0, 1024, open_low=True), default=1.0)
    p.add_argument("--realtime", action="store_true", help="pace the audio as a microphone does")
    p.add_argument("--out", type=v.output_file(".json"), help="write the results as JSON here")
    args = p.parse_args(argv)
    question = question_pcm16(None, Path(f"/tmp/bcaudio-fleet-load-{os.getpid()}.wav"))
    ray.init(include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for replicas in args.replicas:
            port = free_port()
            options = FleetOptions(package=str(Path(args.model).resolve()), device_profile=args.device_profile,
                                   replicas=replicas, sessions_per_replica=args.sessions,
                                   cpus_per_replica=args.cpus_per_replica)
            start(options, "127.0.0.1", port)
            wait_running(replicas, 300)
            url = f"ws://127.0.0.1:{port}/v1/realtime"
            run_load(url, question, replicas, 1, args.realtime)  # warm-up: each replica's first run allocates
            begin = time.perf_counter()
            results = run_load(url, question, args.sessions, args.turns, args.realtime)
            row = summarize(results, time.perf_counter() - begin)
            row.update(replicas=replicas, turns_per_minute=60 * row["turns"] / row["wall_s"])
            rows.append(row)
            print(json.dumps(row), flush=True)
            serve.shutdown()
    finally:
        ray.shutdown()
    if args.out:
        write_json(args.out, {"model": str(args.model), "device_profile": args.device_profile,
                              "sessions": args.sessions, "turns": args.turns, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
