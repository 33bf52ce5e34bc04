"""Reads for the Traffic tab, the API's ``traffic/`` and the CLI's ``service traffic``."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from deployments.models import Service, ServiceRevision
from gateway.models import TrafficChange, TrafficMinute
from gateway.metrics import LATENCY_BUCKETS
from gateway.worker import figures, quantile_ms


def service_traffic(service: Service, *, minutes: int = 60) -> dict:
    """The revisions serving (role, weight, replicas), the rollout in progress, per-revision
    figures over the last ``minutes`` (totals, and a per-minute series for the chart), shadow
    agreement, and the history of traffic changes (newest first)."""
    now = timezone.now()
    since = now - timedelta(minutes=minutes)
    rollout = service.rollout or {}
    serving = list(service.revisions.filter(ended_at__isnull=True).order_by("number"))
    weights = {}
    for revision in serving:
        if revision.role == ServiceRevision.Role.LIVE:
            canary = rollout.get("weight", 0) if rollout.get("mode") == "canary" and rollout.get("status") == "running" else 0
            weights[revision.number] = 100 - canary
        else:
            weights[revision.number] = rollout.get("weight", 0) if rollout.get("revision") == revision.number else 0
    replica_counts = {}
    for replica in service.replica_set.select_related("revision"):
        number = replica.revision.number if replica.revision_id else next(
            (r.number for r in serving if r.role == ServiceRevision.Role.LIVE), 0)
        replica_counts[number] = replica_counts.get(number, 0) + 1
    numbers = sorted({r.number for r in serving} | set(
        TrafficMinute.objects.filter(service=service, minute__gte=since).values_list("revision", flat=True).distinct()))
    series: dict[int, dict] = {}
    for row in TrafficMinute.objects.filter(service=service, minute__gte=since).order_by("minute"):
        minute = row.minute.isoformat()
        per = series.setdefault(row.revision, {})
        point = per.setdefault(minute, {"minute": minute, "requests": 0, "errors": 0,
                                        "buckets": [0] * (len(LATENCY_BUCKETS) + 1)})
        point["requests"] += row.requests
        point["errors"] += row.errors
        for i, count in enumerate(row.latency_buckets[: len(point["buckets"])]):
            point["buckets"][i] += count
    revisions = []
    for number in numbers:
        info = next((r for r in serving if r.number == number), None)
        points = []
        for point in series.get(number, {}).values():
            points.append({"minute": point["minute"], "requests": point["requests"], "errors": point["errors"],
                           "p50_ms": quantile_ms(point["buckets"], 0.5), "p95_ms": quantile_ms(point["buckets"], 0.95)})
        revisions.append({
            "number": number, "image": info.image_ref if info else None,
            "role": info.role if info else "retired", "serving": info is not None,
            "weight": weights.get(number, 0), "replicas": replica_counts.get(number, 0),
            "last_hour": figures(service.pk, number, since), "series": points,
        })
    history = [{"at": c.created_at.isoformat(), "revision": c.revision, "mode": c.mode, "action": c.action,
                "weight": c.weight, "detail": c.detail, "by": c.created_by.username if c.created_by else None}
               for c in TrafficChange.objects.filter(service=service).select_related("created_by")[:100]]
    return {"service": service.name, "rollout": {k: v for k, v in rollout.items() if k not in ("by", "finish_by")},
            "revisions": revisions, "history": history, "minutes": minutes, "as_of": now.isoformat()}
