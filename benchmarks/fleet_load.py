"""Fleet benchmark: first audio p50 / p90 and turns per minute with 1 and then 2 replicas, at N clients.

``python -m bcaudio.benchmarks.fleet_load --model PKG --replicas 1,2 --sessions 4 --turns 3`` starts a local
Ray cluster, deploys the fleet once per replica count (each replica reserving ``--cpus-per-replica``) and
runs the same load as ``benchmarks/serve_load.py`` through the fleet's ingress.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bcaudio.benchmarks.serve_load import free_port, run_load, summarize


def main(argv: list[str] | None = None) -> None:
    import ray
    import soundfile as sf
    from ray import serve

    from bcaudio.demo import speak_question
    from bcaudio.runtime.fleet.deploy import FleetOptions, start, wait_running

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--device-profile", default="cpu-2core")
    p.add_argument("--replicas", default="1,2")
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--realtime", action="store_true", help="pace the audio as a microphone does")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    question, rate = sf.read(str(speak_question(Path(f"/tmp/bcaudio-fleet-load-{os.getpid()}.wav"))), dtype="int16")
    ray.init(include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for replicas in [int(n) for n in args.replicas.split(",")]:
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
        tmp = Path(args.out + ".tmp")
        tmp.write_text(json.dumps({"model": args.model, "device_profile": args.device_profile,
                                   "sessions": args.sessions, "turns": args.turns, "rows": rows}, indent=1))
        tmp.rename(args.out)


if __name__ == "__main__":
    main()
