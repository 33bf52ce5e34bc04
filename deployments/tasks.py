"""Deploy-queue tasks (routed to ``deploy`` by settings): thin, ids only; the work is in
``deployments.worker`` and ``deployments.reconcile``.

acks_late + reject_on_worker_lost are safe on each: the services act only on a service in the
expected status and under its lease, so a message delivered twice does its work once.
"""
from __future__ import annotations


from celery import shared_task

from deployments import reconcile, worker

# A deploy whose image still builds ends at once (WAITING_FOR_IMAGE): the build's end, once
# committed, enqueues it again (registry.signals.image_finished → worker.deploys_waiting_on_image).
# Only a held lease (WAIT) makes a task check back a few seconds later.


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deploy_service(service_id: str) -> str | None:
    status = worker.service_deploy(service_id=service_id)
    if status == worker.WAIT:
        deploy_service.apply_async((service_id,), countdown=worker.WAIT_SECONDS)
    return status


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def update_service(service_id: str) -> str | None:
    status = worker.service_apply_change(service_id=service_id)
    if status == worker.WAIT:
        update_service.apply_async((service_id,), countdown=worker.WAIT_SECONDS)
    return status


# An engine that cannot remove the containers yet is retried with backoff; past the last retry
# the reconciler picks the service up again (it re-enqueues services stuck in deleting).
@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=5)
def delete_service(self, service_id: str) -> str | None:
    status = worker.service_remove(service_id=service_id)
    if status == worker.WAIT:
        delete_service.apply_async((service_id,), countdown=worker.WAIT_SECONDS)
    elif status == "retry" and self.request.retries < self.max_retries:
        raise self.retry(countdown=min(60, 5 * 2 ** self.request.retries))
    return status


@shared_task(ignore_result=True)
def reconcile_services() -> dict:
    return reconcile.services_reconcile()


@shared_task(ignore_result=True)
def check_environment(environment_id: str) -> dict | None:
    return reconcile.environment_check(environment_id=environment_id)


# Every MLPORTAL_SWARM_WATCH_SECONDS (beat, maintenance queue): the tasks Swarm replaced are shown
# within seconds, not at the next full sweep.
@shared_task(ignore_result=True)
def watch_swarm_tasks() -> dict:
    from deployments import cluster

    return cluster.watch()


# The autoscaler: one chain for every autoscaled service (routed to the maintenance queue), one
# round per due refresh period, re-sent while any service is its own (deployments/autoscaling.py).
@shared_task(ignore_result=True)
def autoscale_services(token: str, schedule: dict | None = None) -> float | None:
    from deployments import autoscaling

    countdown, following = autoscaling.autoscale_round(token=token, schedule=schedule or {})
    if countdown is not None:
        # Each service's next time is its tick's start plus its refresh period: the round's own time
        # (reading every replica's /metrics) comes off the wait.
        autoscale_services.apply_async((token, following), countdown=countdown)
    return countdown


# The per-service tick this chain replaced (one message per autoscaled service, re-sent every refresh
# period). Messages of it may still sit in a broker after an upgrade: registered, so none is refused
# as unknown; the first one whose service it still owns hands every autoscaled service to one new
# chain at once (no wait for the reconciler), the rest find their token gone and end.
@shared_task(ignore_result=True)
def autoscale_service(service_id: str, token: str) -> bool:
    from deployments import autoscaling

    return autoscaling.adopt_old_tick(service_id=service_id, token=token)
