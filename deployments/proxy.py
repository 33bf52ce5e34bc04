"""Talking HTTP to a service's replicas: the portal's scoring proxy (round robin over the ready
replicas) and reading each replica's Prometheus ``/metrics``.

Replicas are reached only through the port they publish on the engine's host.
"""
from __future__ import annotations

import http.client
import itertools
import math
import re
import time
from dataclasses import dataclass

SCORE_TIMEOUT = 120.0  # seconds: run() may be slow; the container has its own request time limit
METRICS_TIMEOUT = 3.0

_counters: dict[str, itertools.count] = {}


def round_robin(service_id: str, replicas: list) -> list:
    """Returns ``replicas`` rotated so that successive calls start at the next one."""
    if not replicas:
        return []
    counter = _counters.setdefault(service_id, itertools.count())
    start = next(counter) % len(replicas)
    return replicas[start:] + replicas[:start]


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str
    replica: int
    latency_ms: float
    request_id: str | None = None


class NoReplicaAnswered(Exception):
    pass


def forward(replicas: list, *, path: str, body: bytes, content_type: str, key: str,
            timeout: float = SCORE_TIMEOUT, request_id: str | None = None) -> Answer:
    """POSTs ``body`` to ``path`` on the first replica (in the order given) that takes the
    connection, with the portal's own key; returns its answer as it came. Raises
    NoReplicaAnswered (with each replica's error) when none could be reached."""
    errors = []
    for replica in replicas:
        started = time.monotonic()
        connection = http.client.HTTPConnection(replica.host, replica.port, timeout=timeout)
        try:
            headers = {"Content-Type": content_type or "application/json", "Authorization": f"Bearer {key}"}
            if request_id:  # the replica keeps a well-formed one (else makes its own) and answers it
                headers["X-Request-Id"] = request_id
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return Answer(status=response.status, body=data,
                          content_type=response.getheader("Content-Type", "application/json"),
                          replica=replica.number, latency_ms=(time.monotonic() - started) * 1000,
                          request_id=response.getheader("X-Request-Id"))
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"replica {replica.number} ({replica.host}:{replica.port}): {exc or type(exc).__name__}")
        finally:
            connection.close()
    raise NoReplicaAnswered("; ".join(errors) or "no replica")


def fetch_text(host: str, port: int, path: str, *, timeout: float = METRICS_TIMEOUT) -> str:
    """GETs ``path`` from a replica and returns its text; raises OSError/HTTPException."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise http.client.HTTPException(f"{path} answered {response.status}")
        return data.decode("utf-8", "replace")
    finally:
        connection.close()


_SAMPLE_RE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?$')
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Returns the samples of a Prometheus text exposition: (name, labels, value) per line;
    comments and lines it cannot read are skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        if not match:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL_RE.findall(match["labels"] or "")}
        samples.append((match["name"], labels, value))
    return samples


SCORING_HANDLERS = ("score", "infer")


def summarise_metrics(text: str) -> dict:
    """Returns what the service page shows from one replica's /metrics: scoring requests (by
    status code), errors, and latency (mean, and p50/p95 estimated from the histogram), in ms."""
    requests, by_code = 0.0, {}
    errors = 0.0
    latency_sum = latency_count = 0.0
    buckets: list[tuple[float, float]] = []
    workers = ready = None
    for name, labels, value in parse_prometheus(text):
        if name == "mlportal_requests_total" and labels.get("handler") in SCORING_HANDLERS:
            requests += value
            by_code[labels.get("code", "other")] = by_code.get(labels.get("code", "other"), 0) + value
        elif name == "mlportal_scoring_errors_total":
            errors += value
        elif name == "mlportal_request_duration_seconds_sum":
            latency_sum = value
        elif name == "mlportal_request_duration_seconds_count":
            latency_count = value
        elif name == "mlportal_request_duration_seconds_bucket":
            bound = math.inf if labels.get("le") == "+Inf" else float(labels.get("le", "inf"))
            buckets.append((bound, value))
        elif name == "mlportal_workers":
            workers = int(value)
        elif name == "mlportal_workers_ready":
            ready = int(value)
    return {
        "requests": int(requests), "by_code": {k: int(v) for k, v in sorted(by_code.items())}, "errors": int(errors),
        "latency_sum_ms": latency_sum * 1000, "latency_count": int(latency_count),
        "mean_latency_ms": (latency_sum / latency_count * 1000) if latency_count else None,
        "buckets": sorted(buckets), "workers": workers, "workers_ready": ready,
    }


def quantile_ms(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound (ms) of the histogram bucket holding the q-quantile; None without data."""
    if not buckets or not buckets[-1][1]:
        return None
    target = q * buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= target:
            return None if math.isinf(bound) else bound * 1000
    return None
