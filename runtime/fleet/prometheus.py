"""One Prometheus text for the whole cluster: each live node's Ray metrics endpoint, concatenated.

A production Prometheus scrapes every node itself (Ray writes a service-discovery file for that, see the
README); the ingress's ``/metrics`` gives the same series in one place for a quick look or a small fleet.
"""

from __future__ import annotations

import urllib.request

import ray

SCRAPE_SECONDS = 5.0


def node_endpoints() -> list[str]:
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]


def cluster_metrics() -> str:
    parts = []
    for url in node_endpoints():
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_SECONDS) as response:
                parts.append(f"# node {url}\n" + response.read().decode("utf-8", "replace"))
        except OSError as exc:  # a node going away while we scrape: say so, keep the others
            parts.append(f"# node {url} unreachable: {exc}\n")
    return "".join(parts)
