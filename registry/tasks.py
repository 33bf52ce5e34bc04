"""The image-build task (queue `builds`, routed by settings). Thin: the work is in services."""
from __future__ import annotations

from celery import shared_task
from django.conf import settings

from registry import services

# The builds queue's limits, set here too: mlportal.celery applies them to the tasks it knows when
# the app is finalized, and this module may be imported later (the web process imports it lazily).
SOFT_LIMIT, HARD_LIMIT = settings.CELERY_QUEUE_TIME_LIMITS["builds"]


# acks_late is safe: image_build claims the image with a guarded queued → building update, so a
# message delivered twice builds once. The copy that finds the image building elsewhere checks
# back later: if that worker died (its heartbeat went stale) this copy takes the build over.
@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=50,
             soft_time_limit=SOFT_LIMIT, time_limit=HARD_LIMIT)
def build_image(self, image_id: str) -> str | None:
    status = services.image_build(image_id=image_id)
    if status is None and services.image_is_building(image_id):
        raise self.retry(countdown=services.STALE_BUILD_SECONDS)
    return status
