"""Scoring metrics of a service's replicas: the worker side takes a snapshot, reads combine them.

Worker side (``record``): the reconciler, every sweep, and the deploy tasks, once new replicas
serve, ask each replica's Prometheus ``/metrics`` (``SNAPSHOT_TIMEOUT``, all replicas at once) and
write what it answered on its row (``ServiceReplica.metrics``, ``metrics_at``), or why it did not
(``metrics_error``, ``metrics_checked_at``). Request side (``combine``): the Metrics tab and
``GET services/<ref>/metrics/`` read those rows and say how old they are; ``?live=1`` asks the
replicas now, within ``LIVE_TIMEOUT``, and not at all while the environment's engine is down.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from django.utils import timezone

from deployments import proxy
from deployments.models import Service, ServiceReplica

SNAPSHOT_TIMEOUT = 1.0  # seconds the worker side waits for one replica's /metrics
LIVE_TIMEOUT = 1.0  # seconds an on-demand read waits (the page asks again later)
PARALLEL = 8  # replicas asked at once


def _fetch(replicas: list[ServiceReplica], timeout: float) -> list[tuple[dict | None, str]]:
    """Each replica's summarised /metrics, or None and why; in the order given."""

    def one(replica: ServiceReplica) -> tuple[dict | None, str]:
        try:
            return _stored(proxy.summarise_metrics(proxy.fetch_text(replica.host, replica.port, "/metrics", timeout=timeout))), ""
        except (OSError, proxy.http.client.HTTPException) as exc:
            return None, f"replica {replica.number} did not answer /metrics within {timeout:g} s: {exc or type(exc).__name__}"

    if not replicas:
        return []
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(replicas))) as pool:
        return list(pool.map(one, replicas))


def _stored(summary: dict) -> dict:
    # JSON has no infinity: the histogram's +Inf bucket is stored with the bound null.
    summary["buckets"] = [[None if math.isinf(bound) else bound, count] for bound, count in summary["buckets"]]
    return summary


def record(replicas) -> int:
    """Takes the metrics snapshot of ``replicas`` (rows) and writes it on each row with the time.
    Never raises for a replica that does not answer (its row says why, its last snapshot stays).
    Returns how many answered."""
    replicas = list(replicas)
    answers = _fetch(replicas, SNAPSHOT_TIMEOUT)
    now = timezone.now()
    answered = 0
    for replica, (summary, error) in zip(replicas, answers):
        fields = {"metrics_checked_at": now, "metrics_error": error[:2000]}
        if summary is not None:
            fields.update(metrics=summary, metrics_at=now)
            answered += 1
        ServiceReplica.objects.filter(pk=replica.pk, container_id=replica.container_id).update(**fields)
    return answered


def record_service(service_id) -> int:
    """``record`` for every replica of one service (what a deploy task calls once they serve)."""
    return record(ServiceReplica.objects.filter(service_id=service_id))


def _age(moment: datetime | None) -> int | None:
    return None if moment is None else max(0, int((timezone.now() - moment).total_seconds()))


def _when(moment: datetime | None) -> str:
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M:%S}" if moment else "never"


def combine(service: Service, *, live: bool = False) -> dict:
    """The service's scoring requests and latency, per replica and in total, from the rows'
    snapshots (``live``: asked of the replicas now, within LIVE_TIMEOUT, unless the engine is
    known to be down). Says when each figure was seen: ``checked_at`` (the oldest replica's
    snapshot), ``checked_seconds_ago``, and a ``note`` for the page ("checked 4 s ago", or which
    replica or engine has not answered since when)."""
    replicas = list(service.replica_set.order_by("number"))
    environment = service.environment
    engine_down = environment.engine_ok is False
    notes: list[str] = []
    now = timezone.now()
    live_answers: list[tuple[dict | None, str]] | None = None
    if live and engine_down:
        notes.append(f"The Docker engine of environment '{environment.name}' has not answered since "
                     f"{_when(environment.engine_answered_at)}: not asked now; these are the last figures seen.")
    elif live:
        live_answers = _fetch(replicas, LIVE_TIMEOUT)
    per_replica = []
    merged: dict[float | None, float] = {}
    total = {"requests": 0, "errors": 0, "latency_sum_ms": 0.0, "latency_count": 0, "by_code": {}}
    seen_times = []
    for index, replica in enumerate(replicas):
        summary, error, seen_at = replica.metrics or None, replica.metrics_error, replica.metrics_at
        if live_answers is not None:
            fresh, fresh_error = live_answers[index]
            if fresh is not None:
                summary, error, seen_at = fresh, "", now
            else:
                error = fresh_error
        if error:
            notes.append(f"{error[0].upper()}{error[1:]} (last answer: {_when(seen_at)}).")
        elif summary is None:
            notes.append(f"Replica {replica.number} has not been asked yet.")
        seen_times.append(seen_at)
        entry = {"replica": replica.number, "error": error or None, "checked_at": seen_at,
                 "checked_seconds_ago": _age(seen_at)}
        if summary is None:
            per_replica.append(entry)
            continue
        summary = dict(summary)
        for bound, cumulative in summary.pop("buckets", []):
            merged[bound] = merged.get(bound, 0) + cumulative
        per_replica.append({**summary, **entry})
        for field in ("requests", "errors", "latency_sum_ms", "latency_count"):
            total[field] += summary.get(field) or 0
        for code, count in (summary.get("by_code") or {}).items():
            total["by_code"][code] = total["by_code"].get(code, 0) + count
    if engine_down and not live:
        notes.insert(0, f"The Docker engine of environment '{environment.name}' has not answered since "
                        f"{_when(environment.engine_answered_at)}.")
    buckets = sorted(((math.inf if bound is None else bound), count) for bound, count in merged.items())
    count = total["latency_count"]
    oldest = None if not seen_times or None in seen_times else min(seen_times)
    if oldest is not None:
        notes.insert(0, f"From each replica's /metrics, checked {_age(oldest)} s ago"
                        + (" (asked now)." if live_answers is not None else "."))
    return {
        "requests": total["requests"], "errors": total["errors"], "by_code": total["by_code"],
        "mean_latency_ms": round(total["latency_sum_ms"] / count, 3) if count else None,
        "p50_latency_ms": proxy.quantile_ms(buckets, 0.5), "p95_latency_ms": proxy.quantile_ms(buckets, 0.95),
        "replicas": per_replica, "live": live_answers is not None,
        "checked_at": oldest, "checked_seconds_ago": _age(oldest), "note": " ".join(notes) or "No replica serves.",
    }
