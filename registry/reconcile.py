"""The periodic comparison of images with their builds (``requeue_lost_builds`` task): re-sends image
builds whose task the broker lost (see workspaces.broker).

Queued images are sent again at once after the broker forgot its messages, else once they have
waited unclaimed longer than MLPORTAL_REQUEUE_AFTER_SECONDS (then with a growing gap); a building
image whose worker went silent for STALE_BUILD_SECONDS is sent again too, and the copy that
arrives takes the build over (registry.worker._claim_build). For a queued image, heartbeat_at
is when its task was last sent; the claim overwrites it.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from registry.models import Image

logger = logging.getLogger(__name__)


def requeue_lost_builds() -> dict:
    """Returns {"resent": [...image ids], "broker_forgot": bool}."""
    from registry.worker import STALE_BUILD_SECONDS
    from registry.tasks import build_image
    from workspaces.broker import broker_forgot, resend_due

    forgot = broker_forgot("builds")
    now = timezone.now()
    after_s = settings.MLPORTAL_REQUEUE_AFTER_SECONDS
    stale_build = Q(status=Image.Status.BUILDING, heartbeat_at__lt=now - timedelta(seconds=STALE_BUILD_SECONDS))
    queued = Q(status=Image.Status.QUEUED)
    if not forgot:
        queued &= Q(created_at__lt=now - timedelta(seconds=after_s))
    resent = []
    for image_id, status, created_at, sent_at in (Image.objects.filter(queued | stale_build)
                                                  .values_list("pk", "status", "created_at", "heartbeat_at")
                                                  .order_by("created_at")):
        if status == Image.Status.QUEUED:
            if not forgot and not resend_due(created_at=created_at, sent_at=sent_at, now=now, after_s=after_s):
                continue
            if not Image.objects.filter(pk=image_id, status=Image.Status.QUEUED).update(heartbeat_at=now):
                continue
        build_image.delay(str(image_id))
        resent.append(str(image_id))
    if resent:
        logger.warning("re-sent the build task of %d image(s) the broker had lost: %s", len(resent), ", ".join(resent))
    return {"resent": resent, "broker_forgot": forgot}
