"""The periodic sweeps of runs: ``sweep_lost_runs`` marks lost the runs whose worker stopped
sending heartbeats and removes run containers whose run is over; ``requeue_lost_runs`` sends the
task of queued runs again when the broker lost it."""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from compute.engine import LABEL_ID, EngineError
from compute.runner import list_containers, remove_container
from runs import worker
from runs.models import Run
from workspaces.instance import portal_instance

logger = logging.getLogger(__name__)


def sweep_lost_runs() -> dict:
    """Marks runs lost whose worker stopped sending heartbeats, and removes run containers whose run
    is finished (lost ones included). Returns {"lost": [...run ids], "removed": [...container ids]}.

    Only this portal's containers (label ``mlportal.portal``) are looked at: another portal sharing
    the engine keeps its own. Exited containers of this portal's runs that the database no longer
    knows are removed too; running ones are left alone.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.MLPORTAL_LOST_AFTER_SECONDS)
    stale = Run.objects.filter(status__in=[Run.Status.PREPARING, Run.Status.RUNNING], heartbeat_at__lt=cutoff)
    lost = []
    for run_id, beat in stale.values_list("id", "heartbeat_at"):
        reason = (f"lost: its worker stopped reporting (last heartbeat {beat:%Y-%m-%d %H:%M:%S} UTC, "
                  f"over {settings.MLPORTAL_LOST_AFTER_SECONDS} s ago)")
        if worker.run_mark_lost(run_id=run_id, reason=reason):
            worker.run_append_log(run_id=run_id, workspace_id=Run.objects.get(id=run_id).workspace_id,
                                    lines=[f"[mlportal] {reason}"])
            lost.append(str(run_id))
    removed = []
    try:
        containers = list_containers("run", base_url=settings.MLPORTAL_DOCKER_URL, portal=portal_instance())
    except EngineError as exc:
        logger.warning("sweep: cannot list run containers: %s", exc)
        return {"lost": lost, "removed": removed}
    ids = {c["labels"].get(LABEL_ID, "") for c in containers}
    known = {}
    valid = [i for i in ids if _is_uuid(i)]
    for run_id, status in Run.objects.filter(id__in=valid).values_list("id", "status"):
        known[str(run_id)] = status
    for container in containers:
        run_id = container["labels"].get(LABEL_ID, "")
        status = known.get(run_id)
        finished = status is not None and status not in Run.ACTIVE
        gone_and_stopped = status is None and container["status"] in ("exited", "dead")
        if finished or gone_and_stopped:
            try:
                remove_container(container["id"], base_url=settings.MLPORTAL_DOCKER_URL)
                removed.append(container["id"])
            except EngineError as exc:
                logger.warning("sweep: cannot remove container %s: %s", container["id"][:12], exc)
    return {"lost": lost, "removed": removed}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def requeue_lost_runs() -> dict:
    """Sends the task of queued runs again when the broker lost it: at once after the broker
    forgot its messages (a restart without persistence), else once a run has waited unclaimed
    longer than MLPORTAL_REQUEUE_AFTER_SECONDS, with a growing gap after that (see
    workspaces.broker). The claim in `execute` makes a duplicate start nothing. Returns
    {"resent": [...run ids], "broker_forgot": bool}."""
    from runs.tasks import execute_run
    from workspaces.broker import broker_forgot, resend_due

    forgot = broker_forgot("runs")
    now = timezone.now()
    after_s = settings.MLPORTAL_REQUEUE_AFTER_SECONDS
    queued = Run.objects.filter(status=Run.Status.QUEUED)
    if not forgot:
        queued = queued.filter(created_at__lt=now - timedelta(seconds=after_s))
    resent = []
    for run_id, created_at, sent_at in queued.values_list("id", "created_at", "heartbeat_at").order_by("created_at"):
        if not forgot and not resend_due(created_at=created_at, sent_at=sent_at, now=now, after_s=after_s):
            continue
        # For a queued run, heartbeat_at is when its task was last sent; the claim overwrites it.
        if Run.objects.filter(id=run_id, status=Run.Status.QUEUED).update(heartbeat_at=now):
            execute_run.delay(str(run_id))
            resent.append(str(run_id))
    if resent:
        logger.warning("re-sent the task of %d queued run(s) the broker had lost: %s", len(resent), ", ".join(resent))
    return {"resent": resent, "broker_forgot": forgot}
