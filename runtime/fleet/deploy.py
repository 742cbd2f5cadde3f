"""The fleet as a Ray Serve application, and starting it on a local or an existing Ray cluster."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from bcaudio.runtime.fleet.ingress import FleetIngress
from bcaudio.runtime.fleet.replica import ModelReplica
from bcaudio.runtime.serve.protocol import Limits

MODEL_DEPLOYMENT = "bcaudio-model"
INGRESS_DEPLOYMENT = "bcaudio-ingress"
APP_NAME = "bcaudio"


@dataclass
class FleetOptions:
    """What ``bcaudio fleet`` decides; ``replicas`` fixed, or autoscaled between ``min`` and ``max`` replicas."""

    package: str
    device_profile: str | None = "auto"
    replicas: int | None = 2
    min_replicas: int = 1
    max_replicas: int = 4
    sessions_per_replica: int = 8
    target_sessions: float = 4.0  # autoscaling aims at this many conversations per replica
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    token: str | None = None
    allowed_origins: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)

    def capacity(self) -> int:
        """Conversations the fleet holds at its largest."""
        return (self.replicas or self.max_replicas) * self.sessions_per_replica

    def scaling(self) -> dict[str, Any]:
        if self.replicas is not None:
            return {"num_replicas": self.replicas}
        return {"autoscaling_config": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                       "target_ongoing_requests": self.target_sessions}}


def build_app(options: FleetOptions) -> serve.Application:
    """Model replicas (each one package load, at most ``sessions_per_replica`` conversations) behind one
    ingress, which refuses a client once the fleet's largest size is full."""
    limits = options.limits
    model = serve.deployment(ModelReplica, name=MODEL_DEPLOYMENT, max_ongoing_requests=options.sessions_per_replica,
                             graceful_shutdown_timeout_s=5,
                             ray_actor_options={"num_cpus": options.cpus_per_replica,
                                                "num_gpus": options.gpus_per_replica},
                             **options.scaling())
    ingress = serve.deployment(FleetIngress, name=INGRESS_DEPLOYMENT, num_replicas=1,
                               max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0})
    replicas = model.bind(options.package, options.device_profile, dataclasses.asdict(limits))
    return ingress.bind(replicas, options.capacity(), options.token, options.allowed_origins, limits.idle_timeout)


def start(options: FleetOptions, host: str, port: int, address: str | None = None, certfile: str | None = None,
          keyfile: str | None = None) -> None:
    """Connect to the cluster at ``address`` (None: start a local one), deploy, and return once it is ready."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="warning")
    http: dict[str, Any] = {"host": host, "port": port}
    if certfile:
        http.update(ssl_certfile=certfile, ssl_keyfile=keyfile)
    serve.start(http_options=http)
    serve.run(build_app(options), name=APP_NAME, route_prefix="/")


def replica_status() -> dict[str, int]:
    """Model replicas by state (RUNNING, STARTING, ...), as the Serve controller reports them."""
    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return {}
    deployment = app.deployments.get(MODEL_DEPLOYMENT)
    return {str(k): v for k, v in (deployment.replica_states if deployment else {}).items()}


def wait_running(replicas: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica_status().get("RUNNING", 0) >= replicas:
            return True
        time.sleep(0.5)
    return False
