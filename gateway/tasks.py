"""Thin tasks on the ``deploy`` queue: start and finish a canary or shadow, and watch its bake."""
from __future__ import annotations

from celery import shared_task

CHECK_SECONDS = 5.0  # how often a baking canary's figures are compared with the live revision's


@shared_task(acks_late=True, reject_on_worker_lost=True)
def start_rollout(service_id: str) -> str | None:
    from gateway import worker

    outcome = worker.rollout_start(service_id=service_id)
    if outcome == "wait":
        start_rollout.apply_async((service_id,), countdown=2)
    elif outcome == "running":
        check_rollout.apply_async((service_id,), countdown=CHECK_SECONDS)
    return outcome


@shared_task(acks_late=True, reject_on_worker_lost=True)
def finish_rollout(service_id: str) -> str | None:
    from gateway import worker

    outcome = worker.rollout_finish(service_id=service_id)
    if outcome == "wait":
        finish_rollout.apply_async((service_id,), countdown=2)
    return outcome


@shared_task
def check_rollout(service_id: str) -> str | None:
    """Compares the canary with the live revision; aborts it past a threshold; checks again while
    it bakes."""
    from gateway import worker

    outcome = worker.rollout_check(service_id=service_id)
    if outcome == "baking":
        check_rollout.apply_async((service_id,), countdown=CHECK_SECONDS)
    elif outcome == "tripped":
        finish_rollout.delay(service_id)
    return outcome
