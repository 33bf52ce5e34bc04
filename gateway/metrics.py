"""The gateway's Prometheus metrics, served by the portal at ``/metrics``.

With several web-server processes, ``PROMETHEUS_MULTIPROC_DIR`` (set by ``scripts/run_portal.py``)
makes prometheus_client keep each process's values in files there, and ``/metrics`` adds them up.
"""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter("mlportal_gateway_requests", "Scoring requests answered by the gateway, by status code.",
                   ["workspace", "service", "revision", "code"])
LATENCY = Histogram("mlportal_gateway_request_duration_seconds",
                    "Time from the gateway receiving a scoring request to its answer, queueing included.",
                    ["workspace", "service", "revision"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("mlportal_gateway_in_flight", "Scoring requests being answered by a replica now.",
                  ["workspace", "service", "revision"], multiprocess_mode="livesum")
QUEUED = Gauge("mlportal_gateway_queued", "Scoring requests waiting for a free slot of the service's concurrency limit.",
               ["workspace", "service"], multiprocess_mode="livesum")
REJECTED = Counter("mlportal_gateway_rejected", "Requests refused with 503 because the service was at its limit and its queue full.",
                   ["workspace", "service"])
SHADOW = Counter("mlportal_gateway_shadow_requests", "Requests mirrored to a shadow revision, by whether its answer agreed with the live one.",
                 ["workspace", "service", "revision", "agreed"])


def exposition() -> tuple[bytes, str]:
    """The metrics text of every web-server process (or of this one) and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def forget_process() -> None:
    """Drops this process's live gauges from the shared folder when it stops."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
