"""The sweep that re-sends deploy, update and delete tasks the broker lost (see workspaces.broker).

A service in a transition (creating, updating, deleting) whose lease nobody holds is sent its
task again: at once when the broker forgot its messages (restarted empty, flushed), else once
nothing touched it for ``stale_seconds`` (a worker killed with the message it had taken). Runs
and image builds are re-sent the same way (runs.worker, registry.requeue). A duplicate is
harmless: each task takes the service's lease and re-reads its status first.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from deployments.models import Service

logger = logging.getLogger(__name__)


def requeue_lost_deploys(*, stale_seconds: int) -> dict:
    """Returns {"resent": [...service ids], "broker_forgot": bool}."""
    from deployments.tasks import delete_service, deploy_service, update_service
    from workspaces.broker import broker_forgot

    forgot = broker_forgot("deploy")
    now = timezone.now()
    tasks = {Service.Status.CREATING: deploy_service, Service.Status.UPDATING: update_service,
             Service.Status.DELETING: delete_service}
    stuck = Service.objects.filter(status__in=list(tasks)).filter(Q(lock_token__isnull=True) | Q(lock_until__lt=now))
    if not forgot:
        stuck = stuck.filter(updated_at__lt=now - timedelta(seconds=stale_seconds))
    resent = []
    for service_id, status in stuck.values_list("pk", "status").order_by("created_at"):
        Service.objects.filter(pk=service_id).update(updated_at=now)
        tasks[status].delay(str(service_id))
        resent.append(str(service_id))
    if resent:
        logger.warning("re-sent the task of %d service(s) in a transition%s: %s", len(resent),
                       " (the broker had lost its messages)" if forgot else "", ", ".join(resent))
    return {"resent": resent, "broker_forgot": forgot}
