"""The periodic comparison of services with their Docker engines (``reconcile_services`` task).

Restarts replicas whose container died, removes this portal's containers that no live replica
owns, marks services unhealthy while their engine does not answer, re-enqueues work whose task
was lost, and takes the replicas' metrics snapshot (``deployments.replica_metrics``). It acts on a service only under its lease (``deployments.worker.lock``).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from deployments.models import Environment, Service, ServiceEvent, ServiceReplica
from deployments.services import event
from registry.models import Image
from deployments.worker import (
    LABEL_PORTAL,
    deploy_errors,
    image_wait_limit,
    lock,
    log_tail_event,
    portal_instance,
    replica_rows,
    start_error,
    start_replicas,
    stop_all,
    unlock,
)

logger = logging.getLogger(__name__)

STALE_SECONDS = 120  # a creating/updating/deleting service untouched this long has lost its task
READY_PROBE_SECONDS = 1.0  # how long the reconciler waits for a replica's /ready


def services_reconcile() -> dict:
    """Compares services with their engines: restarts replicas whose container died (same image and
    keys; an event says so), removes this portal's service containers that no live replica owns,
    marks services unhealthy while their engine does not answer, and re-enqueues work whose task
    was lost. Returns a summary."""
    from compute.engine import LABEL_ID, EngineError, engine_status
    from compute.runner import list_containers, remove_container

    summary: dict[str, Any] = {"requeued": 0, "restarted": 0, "removed": 0, "unreachable": []}
    summary["requeued"] = _requeue_lost_work()
    from deployments import autoscaling, cluster

    summary["autoscalers_revived"] = autoscaling.revive_chains()
    clusters: dict[str | None, list[Environment]] = defaultdict(list)
    for environment in Environment.objects.filter(kind=Environment.Kind.CLUSTER):
        clusters[environment.docker_url].append(environment)
    for environments in clusters.values():
        cluster.reconcile(environments, summary)
    instance = portal_instance()
    by_engine: dict[str | None, list[Environment]] = defaultdict(list)
    for environment in Environment.objects.filter(kind=Environment.Kind.LOCAL):
        by_engine[environment.docker_url].append(environment)
    clusters: dict[str | None, list[Environment]] = defaultdict(list)
    for environment in Environment.objects.filter(kind=Environment.Kind.CLUSTER):
        clusters[environment.docker_url].append(environment)
    for base_url, environments in clusters.items():  # their pages show what was seen too
        status = engine_status(base_url)
        record_engine(environments, status)
        if status["ok"]:  # a silent engine is not asked twice in one pass
            record_swarm(environments, base_url)
    for base_url, environments in by_engine.items():
        status = engine_status(base_url)
        if not status["ok"]:
            summary["unreachable"].append(base_url or "local")
            record_engine(environments, status)
            _mark_engine_down(environments, status["error"])
            continue
        try:
            # Containers first, services second: a container only exists once its service's row does.
            containers = [c for c in list_containers("service", base_url=base_url) if c["labels"].get(LABEL_PORTAL) == instance]
        except EngineError as exc:
            summary["unreachable"].append(base_url or "local")
            record_engine(environments, {"ok": False, "version": status["version"], "error": str(exc)})
            _mark_engine_down(environments, str(exc))
            continue
        record_engine(environments, status)
        live = {str(s.pk): s for s in Service.objects.filter(environment__in=environments)
                .exclude(status=Service.Status.DELETED).select_related("image", "environment", "workspace")}
        owned: dict[str, list[dict]] = defaultdict(list)
        for container in containers:
            service_id = container["labels"].get(LABEL_ID, "")
            if service_id in live:
                owned[service_id].append(container)
                continue
            try:
                remove_container(container["id"], base_url=base_url)
                summary["removed"] += 1
            except EngineError as exc:
                logger.warning("could not remove orphan container %s: %s", container["id"], exc)
        for service_id, service in live.items():
            if service.status in (Service.Status.HEALTHY, Service.Status.UNHEALTHY, Service.Status.FAILED):
                restarted, removed = _reconcile_service(service, owned.get(service_id, []))
                summary["restarted"] += restarted
                summary["removed"] += removed
    summary["metrics"] = _record_metrics()
    return summary


def _record_metrics() -> int:
    """The metrics snapshot of every replica that serves, on engines that answered this pass (on
    a silent one the last snapshot stays, and its page says since when)."""
    from deployments import replica_metrics

    return replica_metrics.record(ServiceReplica.objects.filter(
        service__status__in=[Service.Status.HEALTHY, Service.Status.UNHEALTHY, Service.Status.UPDATING],
        service__environment__engine_ok=True))


def _requeue_lost_work() -> int:
    return len(requeue_lost_deploys()["resent"])


def requeue_lost_deploys(*, stale_seconds: int = STALE_SECONDS) -> dict:
    """Re-enqueues the task of services stuck in a transition (creating, updating, deleting)
    whose task was lost and whose lease nobody holds: at once when the broker forgot its messages
    (restarted empty or flushed: the sentinel of workspaces.broker, as runs and builds do), else
    once nothing touched them for ``stale_seconds`` (a worker killed with the message it had).
    A duplicate is harmless: each task takes the lease and re-reads the status first.
    Returns {"resent": [...service ids], "broker_forgot": bool}."""
    from deployments.tasks import delete_service, deploy_service, update_service
    from workspaces.broker import broker_forgot

    forgot = broker_forgot("deploy")
    now = timezone.now()
    tasks = {Service.Status.CREATING: deploy_service, Service.Status.UPDATING: update_service,
             Service.Status.DELETING: delete_service}
    stuck = Service.objects.filter(status__in=list(tasks)).filter(Q(lock_token__isnull=True) | Q(lock_until__lt=now))
    if not forgot:
        stuck = stuck.filter(updated_at__lt=now - timedelta(seconds=stale_seconds))
    # A deploy waiting on a build has no task by design: the build's end enqueues it (and the
    # builds' own requeue sweep resends a lost build). Past the wait limit it is sent to fail.
    stuck = stuck.exclude(Q(status=Service.Status.CREATING, image__status__in=[Image.Status.QUEUED, Image.Status.BUILDING],
                            created_at__gte=now - timedelta(seconds=image_wait_limit())))
    resent = []
    for service_id, status in stuck.values_list("pk", "status").order_by("created_at"):
        Service.objects.filter(pk=service_id).update(updated_at=now)
        tasks[status].delay(str(service_id))
        resent.append(str(service_id))
    if resent:
        logger.warning("re-sent the task of %d service(s) in a transition%s: %s", len(resent),
                       " (the broker had lost its messages)" if forgot else "", ", ".join(resent))
    return {"resent": resent, "broker_forgot": forgot}


def record_engine(environments: list[Environment], status: dict) -> None:
    """Writes what the engine answered (``compute.engine.engine_status``) on its environments'
    rows, with the time: the pages read these instead of asking the engine."""
    now = timezone.now()
    fields = {"engine_ok": bool(status["ok"]), "engine_version": (status.get("version") or "")[:64],
              "engine_error": (status.get("error") or "")[:2000], "engine_checked_at": now}
    if status["ok"]:
        fields["engine_answered_at"] = now
    Environment.objects.filter(pk__in=[e.pk for e in environments]).update(**fields)


def record_swarm(environments: list[Environment], base_url: str | None) -> dict:
    """Asks a cluster engine for its swarm (``compute.swarm.swarm_status``) and writes the answer
    on its environments' rows with the time: the pages and the API's ``swarm`` read these. An
    engine that does not answer is written as state ``unknown`` with the error. Returns it."""
    from compute.engine import EngineError
    from compute.swarm import swarm_status

    try:
        seen = swarm_status(base_url)
    except EngineError as exc:
        seen = {"state": "unknown", "manager": False, "nodes": 0, "managers": 0, "error": str(exc)[:2000]}
    Environment.objects.filter(pk__in=[e.pk for e in environments]).update(swarm=seen, swarm_checked_at=timezone.now())
    return seen


def environment_check(*, environment_id: str) -> dict | None:
    """Asks one environment's engine now and records the answer (after a create or an engine
    URL change, so its page need not wait for the next reconcile). Returns the status."""
    from compute.engine import engine_status

    environment = Environment.objects.filter(pk=environment_id).first()
    if environment is None:
        return None
    status = engine_status(environment.docker_url)
    same_engine = list(Environment.objects.filter(engine_url=environment.engine_url))
    record_engine(same_engine, status)
    clusters = [e for e in same_engine if e.kind == Environment.Kind.CLUSTER]
    if clusters and status["ok"]:
        record_swarm(clusters, environment.docker_url)
    return status


def _record_replicas(service: Service, containers: dict[str, dict], problems: dict[int, str],
                     fresh: set[str] = frozenset()) -> None:
    """Writes each replica's container state and whether it answers /ready (a short probe) on
    its row, with the time. ``fresh``: containers this pass started (their rows say so already)."""
    from deployments import proxy

    now = timezone.now()
    for replica in ServiceReplica.objects.filter(service=service):
        if replica.container_id in fresh:
            continue
        container = containers.get(replica.container_id)
        if container is None:
            fields = {"state": "gone", "ready": False, "state_error": problems.get(replica.number, "")}
        else:
            ready = False
            if container["running"]:
                try:
                    proxy.fetch_text(replica.host, replica.port, "/ready", timeout=READY_PROBE_SECONDS)
                    ready = True
                except (OSError, proxy.http.client.HTTPException):
                    ready = False
            fields = {"state": container["status"] or "unknown", "ready": ready, "state_error": ""}
        ServiceReplica.objects.filter(pk=replica.pk).update(checked_at=now, **fields)


def _mark_engine_down(environments: list[Environment], error: str | None) -> None:
    # Their state is unknown now; checked_at keeps the time they were last seen, the error says why.
    ServiceReplica.objects.filter(service__environment__in=environments).update(
        state="unknown", state_error=f"the engine did not answer: {error}"[:2000])
    for service in Service.objects.filter(environment__in=environments, status=Service.Status.HEALTHY):
        if Service.objects.filter(pk=service.pk, status=Service.Status.HEALTHY).update(status=Service.Status.UNHEALTHY):
            event(service.pk, f"The Docker engine of environment '{service.environment.name}' does not answer: {error}",
                  ServiceEvent.Level.ERROR)


def _describe_gone(container: dict | None, state: dict | None) -> str:
    if container is None or state is None:
        return "was removed"
    if state.get("oom"):
        return "ran out of memory"
    if state.get("exit_code") is not None:
        return f"exited with code {state['exit_code']}"
    return f"is {state.get('status') or container.get('status') or 'not running'}"


def _reconcile_service(service: Service, containers: list[dict]) -> tuple[int, int]:
    """Repairs one service under its lease: stray containers removed, dead replicas replaced.
    Returns (replicas restarted, containers removed)."""
    from compute.containers import container_state
    from compute.engine import EngineError
    from compute.runner import remove_container

    token = lock(service.pk)
    if token is None:
        return 0, 0
    restarted = removed = 0
    base_url = service.environment.docker_url
    try:
        service.refresh_from_db()
        if service.status not in (Service.Status.HEALTHY, Service.Status.UNHEALTHY, Service.Status.FAILED):
            return 0, 0
        replicas = list(service.replica_set.select_related("revision__image"))
        known = {r.container_id for r in replicas}
        by_id = {c["id"]: c for c in containers}
        for container in containers:
            if container["id"] not in known:  # left by an interrupted update or scale
                try:
                    remove_container(container["id"], base_url=base_url)
                    removed += 1
                except EngineError as exc:
                    logger.warning("could not remove stray container %s: %s", container["id"], exc)
        if service.status == Service.Status.FAILED:
            _record_replicas(service, by_id, {})
            return restarted, removed
        problems = []
        failed: dict[int, str] = {}
        fresh: set[str] = set()
        wanted = set(range(1, service.replicas + 1))
        missing_numbers = sorted(wanted - {r.number for r in replicas})
        for replica in replicas:
            container = by_id.get(replica.container_id)
            if container is not None and container["running"]:
                continue
            try:
                state = container_state(replica.container_id, base_url=base_url) if container else None
                # A canary's or shadow's replica comes back with its own revision's image.
                image = replica.revision.image if replica.revision_id and replica.revision.image_id else service.image
                started = start_replicas(service, image=image, numbers=[replica.number])[0]
            except deploy_errors() as exc:
                log_tail_event(service.pk, exc)
                problems.append(f"replica {replica.number}: {start_error(exc)}")
                failed[replica.number] = start_error(exc)
                continue
            now = timezone.now()
            fresh.add(started["id"])
            ServiceReplica.objects.filter(pk=replica.pk).update(
                container_id=started["id"], host=started["host"], port=started["port"], restarts=replica.restarts + 1,
                started_at=now, state="running", ready=True, state_error="", checked_at=now)
            if container is not None:
                stop_all([replica.container_id], base_url)
            restarted += 1
            event(service.pk, f"Replica {replica.number}'s container {replica.container_id[:12]} {_describe_gone(container, state)}; "
                              f"started a new one ({started['id'][:12]}) with the same image and keys.",
                  ServiceEvent.Level.WARNING)
        for number in missing_numbers:
            try:
                started = start_replicas(service, image=service.image, numbers=[number])
            except deploy_errors() as exc:
                problems.append(f"replica {number}: {start_error(exc)}")
                continue
            ServiceReplica.objects.bulk_create(replica_rows(service, started))
            fresh.add(started[0]["id"])
            restarted += 1
            event(service.pk, f"Replica {number} was missing; started it ({started[0]['id'][:12]}).", ServiceEvent.Level.WARNING)
        _record_replicas(service, by_id, failed, fresh)
        _settle_health(service, problems)
    finally:
        unlock(service.pk, token)
    return restarted, removed


def _settle_health(service: Service, problems: list[str]) -> None:
    if problems:
        if Service.objects.filter(pk=service.pk, status=Service.Status.HEALTHY).update(status=Service.Status.UNHEALTHY):
            event(service.pk, f"Unhealthy: could not restart {'; '.join(problems)}", ServiceEvent.Level.ERROR)
    elif Service.objects.filter(pk=service.pk, status=Service.Status.UNHEALTHY).update(status=Service.Status.HEALTHY):
        event(service.pk, "Healthy again: every replica answers.")
