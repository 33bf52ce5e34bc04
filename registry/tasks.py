"""The image-build task (queue `builds`, routed by settings) and the removal of a deleted image from
the engine (the maintenance queue). Thin: the work is in registry.worker."""
from __future__ import annotations

from celery import shared_task

from registry import worker


# acks_late is safe: image_build claims the image with a guarded queued → building update, so a
# message delivered twice builds once. The copy that finds the image building elsewhere checks
# back later: if that worker died (its heartbeat went stale) this copy takes the build over.
# Time limits: the builds queue's, applied by mlportal.celery.QueueTimeLimits.
@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=50)
def build_image(self, image_id: str) -> str | None:
    status = worker.image_build(image_id=image_id)
    if status is None and worker.image_is_building(image_id):
        raise self.retry(countdown=worker.STALE_BUILD_SECONDS)
    return status


@shared_task(ignore_result=True)
def requeue_lost_builds() -> dict:
    from registry.reconcile import requeue_lost_builds as requeue

    return requeue()


# Sent on commit by registry.services.image_delete, the row already gone. Idempotent (removing
# what is gone answers "gone"), so a second delivery is harmless; only an unreachable engine is
# retried, with backoff (5 s doubling, 6 tries): a refusal is logged, not retried.
@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=6)
def remove_engine_image(self, tag: str, engine_id: str) -> str:
    from compute.engine import EngineUnreachable

    try:
        return worker.engine_image_remove(tag=tag, engine_id=engine_id)
    except EngineUnreachable as exc:
        raise self.retry(exc=exc, countdown=min(300, 5 * 2 ** self.request.retries))
