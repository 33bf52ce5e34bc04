"""The worker's side of services in ``cluster`` environments (a Docker Swarm; compute/swarm.py).

Swarm keeps the replicas: it starts them, replaces a task that dies, rolls an update start-first
and rolls a failed one back. The portal asks (``apply_service``), then reads the tasks back and
writes what it saw: one ``ServiceReplica`` row per running, healthy task (its node's address and
the port the task published), which is what the gateway routes to, and an event for each task
Swarm replaced, naming the node. Called by deployments' worker functions under the service's lease.
"""
from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compute import swarm
from deployments.models import Environment, Service, ServiceEvent, ServiceReplica

logger = logging.getLogger(__name__)

READY_TIMEOUT = 120  # seconds every task has to run healthy (init() loads the model)
UPDATE_TIMEOUT = 300  # a rolling update (start-first, one task at a time) settles within this
FAILED_TASKS_LIMIT = 3  # a new service whose tasks failed this often will not start: give up
POLL = 0.5


class ClusterError(Exception):
    """Swarm could not do what was asked; ``str()`` says why, ``log_tail`` the tasks' last lines."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class Pending(ClusterError):
    """The tasks cannot be placed (Swarm's reason, e.g. no node with the environment's label)."""


def _event(service_id, message: str, level: str = ServiceEvent.Level.INFO) -> None:
    ServiceEvent.objects.create(service_id=service_id, level=level, message=message[:4000])


def _internal_key(service: Service) -> str:
    from monitoring.services import internal_key

    return internal_key(service)


LABEL_REVISION = "mlportal.revision"  # on a canary's or shadow's Swarm service: its revision number


def revision_name(service: Service, number: int) -> str:
    """The Swarm service of a canary or shadow revision (within Swarm's 63 characters)."""
    return f"mlportal-{service.name[:32]}-{service.pk.hex[:8]}-r{number}"


def spec_for(service: Service, *, image, replicas: int | None = None, revision: int | None = None) -> swarm.SwarmSpec:
    """The Swarm spec of ``service`` running ``image``: the same environment a local replica gets,
    minus the keys (they travel as secrets). ``revision``: the spec of that canary's or shadow's
    own Swarm service (``revision_name``), beside the live one."""
    from deployments import worker as deployments
    from workspaces.instance import portal_instance

    env = {k: v for k, v in deployments._container_env(service).items()
           if k not in ("MLPORTAL_SERVICE_KEYS", "MLPORTAL_INTERNAL_KEY")}
    # Swarm stops a task the moment it scales down or rolls: it serves on until every gateway has
    # read the rows without it (the worker syncs them within a poll).
    env["MLPORTAL_STOP_DRAIN_SECONDS"] = f"{2 * settings.MLPORTAL_GATEWAY_REFRESH_SECONDS + POLL + 1:g}"
    environment = service.environment
    extra = {LABEL_REVISION: str(revision)} if revision is not None else {}
    return swarm.SwarmSpec(
        name=service.swarm_name if revision is None else revision_name(service, revision), image=image.image_id or image.tag, replicas=service.replicas if replicas is None else replicas,
        keys=[service.primary_key, service.secondary_key, service.proxy_key], internal_key=_internal_key(service),
        env=env, cpus=service.cpus, memory_mb=service.memory_mb,
        labels={"mlportal.id": str(service.pk), "mlportal.portal": portal_instance(),
                "mlportal.workspace": service.workspace.name, "mlportal.service": service.name,
                "mlportal.image": image.ref, **extra},
        constraints=swarm.placement_constraints(environment.labels),
        reservation=settings.MLPORTAL_SWARM_RESERVATION,
    )


def _host(environment: Environment, task: dict) -> str:
    """Where the gateway reaches a task's published port: its node's address (the engine's
    publish address when the node advertises loopback or nothing)."""
    addr = task.get("addr") or ""
    if not addr or addr in ("0.0.0.0", "::") or addr.startswith("127."):
        return environment.publish_address if environment.publish_address not in ("0.0.0.0", "::") else "127.0.0.1"
    return addr


def _failure(task: dict) -> str:
    what = task["error"] or task["message"] or task["state"]
    if task.get("exit_code") not in (None, 0):
        what = f"{what} (exit code {task['exit_code']})"
    return what


def _logs(service: Service) -> str:
    try:
        return swarm.service_logs(service.swarm_name, tail=40, base_url=service.environment.docker_url)
    except swarm.EngineError:
        return ""


def wait_running(service: Service, count: int, *, since: set[str] | None = None, timeout: float = READY_TIMEOUT,
                 name: str | None = None) -> dict[int, dict]:
    """Waits until ``count`` tasks of the Swarm service ``name`` (default: the live one) run
    healthy; returns slot → task. Raises Pending when Swarm cannot place them, ClusterError when
    tasks keep failing or ``timeout`` passes. ``since``: task ids that existed before (their
    failures do not count)."""
    base_url = service.environment.docker_url
    name = name or service.swarm_name
    deadline = time.monotonic() + timeout
    since = since or set()
    while True:
        tasks = swarm.service_tasks(name, base_url=base_url)
        running = swarm.running_tasks(tasks)
        if len(running) >= count:
            return running
        failed = [t for t in tasks if t["id"] not in since and t["state"] in ("failed", "rejected")]
        if len(failed) >= FAILED_TASKS_LIMIT:
            raise ClusterError(f"its tasks keep failing: {_failure(failed[0])}", log_tail=_logs(service))
        pending = [t for t in tasks if t["state"] == "pending" and t["error"]]
        if pending and time.monotonic() > deadline - timeout + 5:
            raise Pending(f"Swarm cannot place it: {pending[0]['error']}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{len(running)} of {count} task(s) ran healthy within {timeout:g} s", log_tail=_logs(service))
        time.sleep(POLL)


def deploy(service: Service, *, image) -> None:
    """Creates the Swarm service and waits until its tasks run; writes their rows. On failure the
    Swarm service and its secrets are removed again (nothing half-deployed) and ClusterError raised."""
    base_url = service.environment.docker_url
    swarm.require_manager(base_url)
    swarm.apply_service(spec_for(service, image=image), base_url=base_url)
    try:
        wait_running(service, service.replicas)
    except ClusterError:
        remove(service)
        raise
    sync_replicas(service, quiet=True)


def update(service: Service, *, image) -> tuple[bool, str]:
    """Rolls the Swarm service to ``image`` and the service's current keys (start-first, one task
    at a time). Returns (True, "") when Swarm completed it, (False, why) when Swarm rolled it back
    (its own RollbackConfig) or it did not settle; the rows follow what runs either way."""
    base_url = service.environment.docker_url
    before = swarm.update_state(service.swarm_name, base_url=base_url)
    known = {t["id"] for t in swarm.service_tasks(service.swarm_name, base_url=base_url)}
    swarm.apply_service(spec_for(service, image=image), base_url=base_url)
    deadline = time.monotonic() + UPDATE_TIMEOUT
    state = before
    while time.monotonic() < deadline:
        sync_replicas(service, quiet=True)  # each slot's row follows its newest healthy task as Swarm rolls
        state = swarm.update_state(service.swarm_name, base_url=base_url)
        if state["started_at"] != before["started_at"] and state["state"] in swarm.SETTLED_UPDATE:
            break
        if state["started_at"] == before["started_at"] and time.monotonic() > deadline - UPDATE_TIMEOUT + 10:
            break  # Swarm saw nothing to roll (the same spec): nothing to wait for
        time.sleep(POLL)
    else:
        sync_replicas(service)
        return False, f"Swarm's update did not settle within {UPDATE_TIMEOUT} s (it is {state['state'] or 'unknown'})"
    sync_replicas(service, quiet=True)
    if state["state"] == "completed" or state["started_at"] == before["started_at"]:
        remove_old_secrets(service, image=image)
        return True, ""
    failed = [t for t in swarm.service_tasks(service.swarm_name, base_url=base_url)
              if t["id"] not in known and t["state"] in ("failed", "rejected")]
    why = f"{_failure(failed[0])}" if failed else state["message"]
    rolled = "rolled it back" if state["state"].startswith("rollback") else f"paused it ({state['state']})"
    return False, f"Swarm {rolled}: {why}" + (f" ({state['message']})" if failed and state["message"] else "")


def scale(service: Service, replicas: int) -> None:
    """Sets the Swarm service's replica count and waits until that many run (up) or the extra
    ones stopped (down); the rows follow."""
    base_url = service.environment.docker_url
    known = {t["id"] for t in swarm.service_tasks(service.swarm_name, base_url=base_url)}
    swarm.scale_service(service.swarm_name, replicas, base_url=base_url)
    if replicas > service.replica_set.count():
        wait_running(service, replicas, since=known)
    else:
        deadline = time.monotonic() + 60
        while len(swarm.running_tasks(swarm.service_tasks(service.swarm_name, base_url=base_url))) > replicas:
            if time.monotonic() > deadline:
                break
            time.sleep(POLL)
    sync_replicas(service, quiet=True)


def remove(service: Service) -> None:
    """Removes the Swarm service, any canary's or shadow's beside it, and their secrets (a missing
    one is fine)."""
    from workspaces.instance import portal_instance

    base_url, portal = service.environment.docker_url, portal_instance()
    swarm.remove_service(service.swarm_name, portal=portal, base_url=base_url)
    for item in swarm.list_services(portal=portal, base_url=base_url):
        if item["labels"].get("mlportal.id") == str(service.pk):
            swarm.remove_service(item["name"], portal=portal, base_url=base_url)


def remove_old_secrets(service: Service, *, image) -> None:
    from workspaces.instance import portal_instance

    try:
        keep = swarm.secret_names(spec_for(service, image=image))
        swarm.remove_secrets(str(service.pk), portal=portal_instance(), keep=keep, base_url=service.environment.docker_url)
    except swarm.EngineError as exc:
        logger.warning("could not remove old secrets of %s: %s", service.pk, exc)


def sync_replicas(service: Service, *, quiet: bool = False, tasks: list[dict] | None = None, revision=None) -> dict:
    """Makes the service's replica rows the tasks that run healthy now (slot = replica number):
    a replaced task's row moves to the new task (restarts + 1) with an event naming both tasks'
    nodes and why the old one ended; a slot with no running task loses its row (no traffic to
    it). ``quiet``: no events (the deploy or update reports). ``revision``: the rows of that
    canary's or shadow's Swarm service instead (numbered from REPLICA_OFFSET + 1, as on one
    engine). Returns {"running", "replaced", "lost"}."""
    from gateway.services import REPLICA_OFFSET

    environment = service.environment
    name, offset = (service.swarm_name, 0) if revision is None else (revision_name(service, revision.number), REPLICA_OFFSET)
    if tasks is None:
        tasks = swarm.service_tasks(name, base_url=environment.docker_url)
    running = {offset + slot: task for slot, task in swarm.running_tasks(tasks).items()}
    by_id = {t["id"]: t for t in tasks}
    replaced = lost = 0
    now = timezone.now()
    with transaction.atomic():
        rows = {r.number: r for r in ServiceReplica.objects.select_for_update().filter(service=service, revision=revision)}
        for number, row in rows.items():
            task = running.get(number)
            if task is not None and task["id"] == row.task_id:
                continue
            old = by_id.get(row.task_id)
            ended = f"{old['state']}: {_failure(old)}" if old is not None else "gone"
            if task is None:
                row.delete()
                lost += 1
                if not quiet and old is not None and old["state"] in swarm.ENDED:
                    _event(service.pk, f"Replica {number}'s task {row.task_id[:12]} on node {row.node or '?'} ended "
                                       f"({ended}); Swarm is starting another.", ServiceEvent.Level.WARNING)
                continue
            ServiceReplica.objects.filter(pk=row.pk).update(
                container_id=task["container_id"], host=_host(environment, task), port=task["port"], task_id=task["id"],
                node=task["node"], restarts=row.restarts + (0 if quiet else 1), started_at=now)
            if not quiet and row.task_id:
                replaced += 1
                _event(service.pk, f"Replica {number}'s task {row.task_id[:12]} on node {row.node or '?'} ended ({ended}); "
                                   f"Swarm replaced it with task {task['id'][:12]} on node {task['node']}.",
                       ServiceEvent.Level.WARNING)
        for number, task in running.items():
            if number in rows:
                continue
            # Swarm keeps a few ended tasks per slot: the ones of this image that died are its restarts.
            ended = [t for t in tasks if t["slot"] == number - offset and t["id"] != task["id"] and t["state"] in swarm.ENDED]
            died = [t for t in ended if t["state"] in ("failed", "rejected", "complete") and t["image"] == task["image"]]
            ServiceReplica.objects.create(service=service, number=number, container_id=task["container_id"],
                                          host=_host(environment, task), port=task["port"], task_id=task["id"],
                                          node=task["node"], restarts=len(died), revision=revision)
            if quiet:
                continue
            if died:
                old = died[0]
                replaced += 1
                _event(service.pk, f"Replica {number}'s task {old['id'][:12]} on node {old['node'] or '?'} ended "
                                   f"({old['state']}: {_failure(old)}); Swarm replaced it with task {task['id'][:12]} "
                                   f"on node {task['node']}.", ServiceEvent.Level.WARNING)
            else:
                _event(service.pk, f"Replica {number} runs as task {task['id'][:12]} on node {task['node']}.")
    return {"running": len(running), "replaced": replaced, "lost": lost}


def reconcile(environments: list[Environment], summary: dict) -> None:
    """For the cluster environments of one engine: removes this portal's Swarm services that no
    live service owns, and brings each serving service's rows in line with its tasks (marking it
    unhealthy while fewer run than it should, healthy again once all do)."""
    from workspaces.instance import portal_instance

    base_url = environments[0].docker_url
    try:
        swarm.require_manager(base_url)
        owned = swarm.list_services(portal=portal_instance(), base_url=base_url)
    except swarm.EngineError as exc:
        summary["unreachable"].append(base_url or "local")
        for service in Service.objects.filter(environment__in=environments, status=Service.Status.HEALTHY):
            if Service.objects.filter(pk=service.pk, status=Service.Status.HEALTHY).update(status=Service.Status.UNHEALTHY):
                _event(service.pk, f"The swarm of environment '{service.environment.name}' does not answer: {exc}",
                       ServiceEvent.Level.ERROR)
        return
    live = {str(s.pk): s for s in Service.objects.filter(environment__in=environments)
            .exclude(status=Service.Status.DELETED).select_related("environment", "workspace", "image")}
    for item in owned:
        owner = live.get(item["labels"].get("mlportal.id"))
        if owner is not None and LABEL_REVISION in item["labels"] and not _rollout_owns(owner, item["labels"][LABEL_REVISION]):
            owner = None  # a canary's or shadow's Swarm service left over from a rollout that ended
        if owner is None:
            try:
                swarm.remove_service(item["name"], portal=portal_instance(), base_url=base_url)
                summary["removed"] += 1
            except swarm.EngineError as exc:
                logger.warning("could not remove orphan swarm service %s: %s", item["name"], exc)
    for service in live.values():
        if service.status not in (Service.Status.HEALTHY, Service.Status.UNHEALTHY):
            continue
        if (service.rollout or {}).get("status") in ("promoting", "aborting"):
            continue  # the worker is rolling it (promote): its rows follow the roll, which replaced nothing
        try:
            seen = sync_replicas(service)
            rollout = service.rollout or {}
            if rollout.get("status") == "running":  # Swarm replaces the canary's tasks too
                revision = service.revisions.filter(number=rollout.get("revision")).first()
                if revision is not None:
                    sync_replicas(service, revision=revision)
        except swarm.EngineError as exc:
            logger.warning("could not read the tasks of %s: %s", service.pk, exc)
            continue
        summary["restarted"] += seen["replaced"]
        if seen["running"] < service.replicas:
            if Service.objects.filter(pk=service.pk, status=Service.Status.HEALTHY).update(status=Service.Status.UNHEALTHY):
                _event(service.pk, f"Unhealthy: {seen['running']} of {service.replicas} task(s) run; Swarm is replacing "
                                   "the others.", ServiceEvent.Level.ERROR)
        elif Service.objects.filter(pk=service.pk, status=Service.Status.UNHEALTHY).update(status=Service.Status.HEALTHY):
            _event(service.pk, "Healthy again: every task runs.")


def watch() -> dict:
    """The quick look at every cluster environment's tasks (the beat's ``watch-swarm-tasks``, every
    MLPORTAL_SWARM_WATCH_SECONDS): ``reconcile`` for each engine, so a task Swarm replaced is an
    event with its node within seconds. Returns the summary."""
    from collections import defaultdict

    summary: dict = {"restarted": 0, "removed": 0, "unreachable": []}
    engines: dict[str | None, list[Environment]] = defaultdict(list)
    for environment in Environment.objects.filter(kind=Environment.Kind.CLUSTER):
        engines[environment.docker_url].append(environment)
    for environments in engines.values():
        reconcile(environments, summary)
    return summary


def _rollout_owns(service: Service, number: str) -> bool:
    """Whether the service's rollout still needs the Swarm service of revision ``number``: one
    starting (its number is not recorded yet), running or being finished (by the worker, which
    removes it)."""
    rollout = service.rollout or {}
    return rollout.get("status") == "starting" or str(rollout.get("revision")) == str(number)


def logs(service: Service, *, tail: int = 200, timeout: int = 60, revision: int | None = None) -> list[tuple[str, str]]:
    """``[(task id, line)]`` of the live Swarm service's tasks, or (``revision``) of that canary's or
    shadow's own Swarm service (compute.swarm.service_log_lines)."""
    name = service.swarm_name if revision is None else revision_name(service, revision)
    return swarm.service_log_lines(name, tail=tail, base_url=service.environment.docker_url, timeout=timeout)


# --- what the deploy worker does for a cluster service (called under the service's lease) --------

def service_deploy(service: Service, *, image) -> str | None:
    """creating → healthy once Swarm runs every task healthy; failed with the reason when its
    tasks keep failing (the Swarm service is removed again). Placement that no node satisfies
    keeps it creating, with Swarm's reason as its error, and returns WAIT (checked again)."""
    from deployments import worker as deployments
    from deployments.models import ServiceRevision

    try:
        deploy(service, image=image)
    except Pending as exc:
        reason = f"pending: {exc}; it starts once a node matches the environment's placement labels"
        if service.error != reason:
            Service.objects.filter(pk=service.pk, status=Service.Status.CREATING).update(error=reason[:2000])
            _event(service.pk, reason, ServiceEvent.Level.WARNING)
        Service.objects.filter(pk=service.pk, status=Service.Status.CREATING).update(updated_at=timezone.now())
        return deployments.WAIT
    except (ClusterError, swarm.EngineError, ValueError) as exc:
        tail = getattr(exc, "log_tail", "")
        if tail:
            _event(service.pk, f"Last lines of the tasks' logs:\n{tail[-3000:]}", ServiceEvent.Level.ERROR)
        return deployments._fail(service, f"could not start it in cluster environment '{service.environment.name}': {exc}")
    with transaction.atomic():
        moved = Service.objects.filter(pk=service.pk, status=Service.Status.CREATING).update(
            status=Service.Status.HEALTHY, error="")
        if not moved:  # deleted meanwhile: the delete task removes the Swarm service
            return None
        ServiceRevision.objects.create(service=service, number=1, image=image, image_ref=image.ref,
                                       reason=ServiceRevision.Reason.CREATE, created_by_id=service.created_by_id)
        nodes = sorted(set(ServiceReplica.objects.filter(service=service).values_list("node", flat=True)))
        _event(service.pk, f"Deployed image {image.ref} as Swarm service {service.swarm_name}: "
                           f"{service.replicas} task(s) running on node {', '.join(nodes)}.")
    return Service.Status.HEALTHY


def service_apply_change(service: Service, op: dict) -> str | None:
    """A cluster service's pending change: an update, rollback or new keys is a Swarm rolling
    update (start-first; Swarm rolls a failed one back and the portal says so), a scale sets the
    replica count. Finishes the change like the single-engine path does."""
    from django.db.models import Max

    from deployments import worker as deployments
    from deployments.models import ServiceRevision
    from registry.models import Image

    if op.get("op") == "scale":
        target = int(op.get("replicas") or service.replicas)
        before = service.replicas
        try:
            scale(service, target)
        except (ClusterError, swarm.EngineError) as exc:
            try:
                swarm.scale_service(service.swarm_name, before, base_url=service.environment.docker_url)
                sync_replicas(service, quiet=True)
            except swarm.EngineError:
                pass
            message = f"Scaling from {before} to {target} replicas failed: {exc}. It goes on with {before}."
            if deployments._finish_change(service, error=message):
                _event(service.pk, message, ServiceEvent.Level.ERROR)
            return Service.Status.HEALTHY
        if deployments._finish_change(service, replicas=target):
            _event(service.pk, f"Scaled from {before} to {target} replicas (Swarm).")
        return Service.Status.HEALTHY
    image = service.image
    if op.get("image"):
        image = Image.objects.filter(pk=op["image"]).first() or service.image
    what = deployments._describe_change(service, op, image)
    try:
        done, why = update(service, image=image)
    except (ClusterError, swarm.EngineError, ValueError) as exc:
        done, why = False, str(exc)
    if not done:
        message = f"{what[0].upper()}{what[1:]} failed: {why}. It goes on serving image {service.image.ref}."
        if deployments._finish_change(service, error=message):
            _event(service.pk, message, ServiceEvent.Level.ERROR)
        return Service.Status.HEALTHY
    with transaction.atomic():
        if not Service.objects.filter(pk=service.pk, status=Service.Status.UPDATING).update(image=image):
            return None
        if image.pk != service.image_id:
            ServiceRevision.objects.filter(service=service, ended_at__isnull=True).update(ended_at=timezone.now())
            number = (service.revisions.aggregate(n=Max("number"))["n"] or 0) + 1
            ServiceRevision.objects.create(service=service, number=number, image=image, image_ref=image.ref,
                                           reason=ServiceRevision.Reason(op.get("op", "update")), created_by_id=op.get("by"))
            _event(service.pk, f"{'Rolled back' if op.get('op') == 'rollback' else 'Updated'} from image {service.image.ref} "
                               f"to {image.ref} (revision {number}): Swarm rolled every task, start-first.")
        else:
            _event(service.pk, f"Keys changed: Swarm restarted the tasks with the new {op.get('key', '')} key (a new secret).")
    deployments._finish_change(service)
    return Service.Status.HEALTHY
