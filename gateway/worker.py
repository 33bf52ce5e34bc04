"""The worker's side of canaries and shadows: start the new revision's replicas beside the live
ones (on a swarm: a second Swarm service, deployments/cluster_rollout.py), finish (promote or
abort) leaving exactly the right containers, and compare a baking canary with the live revision
from the gateway's per-minute figures.

Containers are touched under the service's lease (the same one updates and the reconciler take),
through the deployments worker's helpers, so nothing else acts on them at the same time.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone as dt_timezone

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from deployments import cluster_rollout
from deployments.cluster import ClusterError
from deployments.models import Service, ServiceEvent, ServiceReplica, ServiceRevision
from gateway.models import TrafficChange, TrafficMinute
from gateway.services import REPLICA_OFFSET
from gateway.metrics import LATENCY_BUCKETS
from gateway.table import mark_changed

WAIT = "wait"


def _deployments():
    from deployments import worker

    return worker


def _drain() -> None:
    """Gives every gateway process time to read the new table before containers stop."""
    time.sleep(settings.MLPORTAL_GATEWAY_REFRESH_SECONDS * 2 + 0.2)


def rollout_start(*, service_id: str) -> str | None:
    """Starts the replicas of a ``starting`` rollout; on success the rollout is ``running`` with
    its revision recorded (role canary or shadow). A failure clears it, with the reason in an
    event and ``last_update_error``; the live revision never stops serving. Returns "running",
    WAIT (another worker holds the service), "failed" or None."""
    from registry.models import Image

    d = _deployments()
    service = Service.objects.select_related("image", "environment", "workspace").filter(pk=service_id).first()
    if service is None or (service.rollout or {}).get("status") != "starting":
        return None
    token = d.lock(service.pk)
    if token is None:
        return WAIT
    try:
        service.refresh_from_db()
        rollout = dict(service.rollout or {})
        if rollout.get("status") != "starting":
            return None
        image = Image.objects.filter(pk=rollout.get("image")).first()
        if image is None:
            return _give_up(service, "its image was deleted")
        live = service.replica_set.filter(Q(revision__isnull=True) | Q(revision__role=ServiceRevision.Role.LIVE)).count()
        # No other revision is made meanwhile: changes are refused while a rollout is set.
        number = (service.revisions.aggregate(n=Max("number"))["n"] or 0) + 1
        on_swarm = service.environment.kind == service.environment.Kind.CLUSTER
        try:
            if on_swarm:  # a second Swarm service beside the live one
                started = cluster_rollout.start(service, image=image, number=number, replicas=max(1, live))
            else:
                started = d.start_replicas(service, image=image, numbers=[REPLICA_OFFSET + n for n in range(1, max(1, live) + 1)])
        except (*d.deploy_errors(), ClusterError) as exc:
            d.log_tail_event(service.pk, exc)
            return _give_up(service, d.start_error(exc))
        with transaction.atomic():
            current = Service.objects.select_for_update().filter(pk=service.pk).first()
            if current is None or (current.rollout or {}).get("status") != "starting" or current.status == Service.Status.DELETING:
                if on_swarm:
                    cluster_rollout.remove(service, number)
                else:
                    d.stop_all([item["id"] for item in started], service.environment.docker_url)
                return None
            role = ServiceRevision.Role.CANARY if rollout["mode"] == "canary" else ServiceRevision.Role.SHADOW
            revision = ServiceRevision.objects.create(service=service, number=number, image=image, image_ref=image.ref,
                                                      reason=role, role=role, created_by_id=rollout.get("by"))
            ServiceReplica.objects.bulk_create(cluster_rollout.replica_rows(service, started, revision=revision) if on_swarm
                                               else d.replica_rows(service, started, revision=revision))
            now = timezone.now()
            rollout.update(status="running", revision=number, started_at=now.isoformat(),
                           bake_until=(now + timedelta(seconds=rollout["bake_seconds"])).isoformat())
            Service.objects.filter(pk=service.pk).update(rollout=rollout)
            transaction.on_commit(mark_changed)  # the gateways on this host split traffic at once
            TrafficChange.objects.create(service=service, revision=number, mode=rollout["mode"], action="start",
                                         weight=rollout["weight"], detail=f"image {image.ref}", created_by_id=rollout.get("by"))
            d.event(service.pk, f"{rollout['mode'].capitalize()} revision {number} (image {image.ref}) is ready with "
                                f"{len(started)} replica(s) and gets {rollout['weight']}% of requests"
                                f"{' mirrored' if rollout['mode'] == 'shadow' else ''}; bake period {rollout['bake_seconds']} s.")
        return "running"
    finally:
        d.unlock(service.pk, token)


def _give_up(service: Service, reason: str) -> str:
    d = _deployments()
    rollout = service.rollout or {}
    message = f"The {rollout.get('mode')} of image {rollout.get('image_ref')} could not start: {reason}. Nothing changed: it goes on serving image {service.image.ref}."
    Service.objects.filter(pk=service.pk).update(rollout={}, last_update_error=message[:2000])
    d.event(service.pk, message, ServiceEvent.Level.ERROR)
    return "failed"


def rollout_finish(*, service_id: str) -> str | None:
    """Promotes or aborts a ``promoting``/``aborting`` rollout. Promote: the new revision becomes
    the live one (the service's image), its replicas take the live numbers, the old replicas'
    rows go, then (after the gateway has read that) their containers stop. Abort: the new
    replicas' rows go, then their containers. On a swarm (deployments/cluster_rollout.py) promote
    first rolls the live Swarm service to the new image (a failed roll aborts instead), and the
    new revision's own Swarm service goes either way. The rollout is cleared last. Returns
    "promoted", "aborted", WAIT or None."""
    d = _deployments()
    service = Service.objects.select_related("image", "environment", "workspace").filter(pk=service_id).first()
    if service is None or (service.rollout or {}).get("status") not in ("promoting", "aborting"):
        return None
    token = d.lock(service.pk)
    if token is None:
        return WAIT
    try:
        service.refresh_from_db()
        rollout = dict(service.rollout or {})
        if rollout.get("status") not in ("promoting", "aborting"):
            return None
        new = service.revisions.filter(number=rollout["revision"]).select_related("image").first()
        promote = rollout["status"] == "promoting"
        on_swarm = service.environment.kind == service.environment.Kind.CLUSTER
        if on_swarm and promote and new is not None:
            # Swarm rolls the live service to the new image while the canary still serves.
            done, why = cluster_rollout.promote(service, image=new.image)
            if not done:
                promote = False
                rollout["finish_reason"] = f"the promotion failed: {why}"
                d.event(service.pk, f"Promoting {rollout['mode']} revision {new.number} failed: {why}. It is aborted; "
                                    f"image {service.image.ref} goes on serving.", ServiceEvent.Level.ERROR)
        now = timezone.now()
        with transaction.atomic():
            replicas = list(service.replica_set.select_related("revision"))
            fresh = [r for r in replicas if r.revision_id == (new.pk if new else None)]
            old = [r for r in replicas if r not in fresh]
            # On a swarm the new revision's own Swarm service goes either way: promoted, the live one runs its image.
            going = old if promote and not on_swarm else fresh
            ServiceReplica.objects.filter(pk__in=[r.pk for r in going]).delete()
            if promote and new is not None:
                ServiceRevision.objects.filter(service=service, ended_at__isnull=True).exclude(pk=new.pk).update(ended_at=now)
                ServiceRevision.objects.filter(pk=new.pk).update(role=ServiceRevision.Role.LIVE)
                if on_swarm:
                    Service.objects.filter(pk=service.pk).update(image=new.image)
                    message = (f"Promoted {rollout['mode']} revision {new.number} (image {new.image_ref}): Swarm rolled the "
                               f"live service to it start-first; the {rollout['mode']}'s own Swarm service stops.")
                else:
                    for replica in fresh:  # the live numbers (1, 2…), which the reconciler keeps running
                        ServiceReplica.objects.filter(pk=replica.pk).update(number=replica.number - REPLICA_OFFSET)
                    Service.objects.filter(pk=service.pk).update(image=new.image, replicas=len(fresh) or service.replicas)
                    message = (f"Promoted {rollout['mode']} revision {new.number} (image {new.image_ref}): it takes all "
                               f"traffic; {len(old)} old replica(s) stop.")
            else:
                if new is not None:
                    ServiceRevision.objects.filter(pk=new.pk).update(ended_at=now)
                message = (f"Aborted {rollout['mode']} revision {rollout['revision']} ({rollout.get('finish_reason', 'aborted')}): "
                           f"revision {_live_number(service)} takes all traffic; {len(fresh)} new replica(s) stop.")
            transaction.on_commit(mark_changed)  # read before the drain below stops any container
            TrafficChange.objects.create(service=service, revision=rollout["revision"], mode=rollout["mode"],
                                         action="promote" if promote else ("rollback" if rollout.get("tripped") else "abort"),
                                         weight=100 if promote else 0, detail=rollout.get("finish_reason", "")[:2000],
                                         created_by_id=rollout.get("finish_by"))
            level = ServiceEvent.Level.WARNING if rollout.get("tripped") else ServiceEvent.Level.INFO
            d.event(service.pk, message, level)
        _drain()
        if on_swarm:
            problem = cluster_rollout.remove(service, rollout["revision"])
            problems = [problem] if problem else []
        else:
            problems = d.stop_all([r.container_id for r in going], service.environment.docker_url)
        if problems:
            d.event(service.pk, f"Could not remove containers ({'; '.join(problems)}); the reconciler retries.",
                    ServiceEvent.Level.WARNING)
        # Over only now, so whoever waits for it finds exactly the containers that stay.
        Service.objects.filter(pk=service.pk).update(rollout={})
        return "promoted" if promote else "aborted"
    finally:
        d.unlock(service.pk, token)


def _live_number(service: Service) -> int | str:
    live = service.revisions.filter(ended_at__isnull=True, role=ServiceRevision.Role.LIVE).first()
    return live.number if live else "?"


# --- the bake: compare the canary with the live revision ------------------------------------------

def figures(service_id, revision: int, since: datetime) -> dict:
    """Requests, errors, error rate (%), p50/p95/p99 (ms, bucket upper bounds), and shadow
    agreement of one revision from ``since`` on, added up over the gateway processes."""
    rows = TrafficMinute.objects.filter(service_id=service_id, revision=revision, minute__gte=since - timedelta(minutes=1))
    requests = errors = shadow = agreed = 0
    latency_sum = 0.0
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    for row in rows:
        requests += row.requests
        errors += row.errors
        shadow += row.shadow_requests
        agreed += row.shadow_agreed
        latency_sum += row.latency_sum
        for i, count in enumerate(row.latency_buckets[: len(buckets)]):
            buckets[i] += count
    return {"requests": requests, "errors": errors, "error_rate": (100.0 * errors / requests) if requests else None,
            "p50_ms": quantile_ms(buckets, 0.5), "p95_ms": quantile_ms(buckets, 0.95), "p99_ms": quantile_ms(buckets, 0.99),
            "mean_ms": (latency_sum / requests * 1000) if requests else None,
            "shadow_requests": shadow, "agreement": (100.0 * agreed / shadow) if shadow else None}


def quantile_ms(buckets: list[int], q: float) -> float | None:
    total = sum(buckets)
    if not total:
        return None
    target, seen = q * total, 0
    for i, count in enumerate(buckets):
        seen += count
        if seen >= target:
            return LATENCY_BUCKETS[i] * 1000 if i < len(LATENCY_BUCKETS) else LATENCY_BUCKETS[-1] * 1000
    return None


def tripped(canary: dict, live: dict, thresholds: dict) -> str | None:
    """Why the canary must be rolled back (the figure and both values), or None."""
    if canary["requests"] < thresholds["min_requests"]:
        return None
    live_rate = live["error_rate"] or 0.0
    if canary["error_rate"] is not None and canary["error_rate"] > live_rate + thresholds["error_points"]:
        return (f"error rate {canary['error_rate']:.1f}% over {canary['requests']} requests against the live revision's "
                f"{live_rate:.1f}% (threshold: {thresholds['error_points']:g} points above it)")
    if canary["p99_ms"] is not None and live["p99_ms"] is not None:
        limit = max(live["p99_ms"] * thresholds["p99_factor"], live["p99_ms"] + thresholds["p99_min_ms"])
        if canary["p99_ms"] > limit:
            return (f"p99 latency {canary['p99_ms']:g} ms against the live revision's {live['p99_ms']:g} ms "
                    f"(threshold: {thresholds['p99_factor']:g}x and at least {thresholds['p99_min_ms']:g} ms more)")
    return None


def rollout_check(*, service_id: str) -> str | None:
    """One look at a running canary in its bake period: "tripped" (marked aborting, with the
    reason), "baking" (look again), "baked" (the period is over: it stays for the user to promote
    or abort) or None (no canary running)."""
    d = _deployments()
    service = Service.objects.filter(pk=service_id).first()
    rollout = dict((service.rollout if service else None) or {})
    if rollout.get("status") != "running" or rollout.get("mode") != "canary":
        return None
    since = datetime.fromisoformat(rollout["started_at"])
    bake_until = datetime.fromisoformat(rollout["bake_until"])
    canary = figures(service.pk, rollout["revision"], since)
    live = figures(service.pk, _live_number(service), since) if _live_number(service) != "?" else figures(service.pk, 0, since)
    reason = tripped(canary, live, rollout.get("thresholds") or {})
    if reason:
        with transaction.atomic():
            moved = Service.objects.filter(pk=service.pk, rollout__status="running", rollout__revision=rollout["revision"])
            rollout.update(status="aborting", tripped=True, finish_reason=f"rolled back automatically: {reason}")
            if not moved.update(rollout=rollout):
                return None
            transaction.on_commit(mark_changed)  # the canary's share drops to 0 at once
            d.event(service.pk, f"Canary revision {rollout['revision']} is rolled back automatically during its bake period: "
                                f"{reason}.", ServiceEvent.Level.ERROR)
        return "tripped"
    if timezone.now() >= bake_until:
        if not rollout.get("baked"):
            rollout["baked"] = True
            if Service.objects.filter(pk=service.pk, rollout__status="running").update(rollout=rollout):
                d.event(service.pk, f"Canary revision {rollout['revision']} passed its {rollout['bake_seconds']} s bake period "
                                    f"({canary['requests']} requests, error rate {canary['error_rate'] or 0:.1f}%): promote it "
                                    "when ready.")
        return "baked"
    return "baking"


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt_timezone.utc)
