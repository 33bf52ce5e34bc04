"""Task side of drift checks asked for on demand: a DriftJob is claimed, computed with its progress
written as it goes, and closed with its report or the reason it failed.

The request (``services.drift_job_start``) only writes the queued job and enqueues
``monitoring.tasks.compute_drift_job`` after the commit; reading the capture and the reference and
the per-feature tests (pandas, scipy) happen here, on the maintenance worker.
"""
from __future__ import annotations

import logging
import time

from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone

from core.errors import PortalError

from .models import DriftJob, DriftSettings

log = logging.getLogger(__name__)
PROGRESS_EVERY = 0.5  # seconds between progress writes (the page polls every second)


def _close(job_id: int, status: str, **fields) -> bool:
    """Ends a running job; False when it was not running any more (closed as stale meanwhile)."""
    now = timezone.now()
    return bool(DriftJob.objects.filter(id=job_id, status=DriftJob.Status.RUNNING).update(
        status=status, finished_at=now, heartbeat_at=now, **fields))


def drift_job_run(*, job_id: int) -> str | None:
    """Computes a queued drift job; returns its final status, or None when someone else has it."""
    from .worker import compute_drift

    now = timezone.now()
    if not DriftJob.objects.filter(id=job_id, status=DriftJob.Status.QUEUED).update(
            status=DriftJob.Status.RUNNING, started_at=now, heartbeat_at=now, step="Starting", progress=0.0):
        return None  # already taken (a duplicate message), or closed
    job = DriftJob.objects.select_related("service", "requested_by").get(pk=job_id)
    last = [0.0]

    def progress(step: str, fraction: float) -> None:
        moment = time.monotonic()
        if moment - last[0] < PROGRESS_EVERY:
            return
        last[0] = moment
        DriftJob.objects.filter(id=job_id, status=DriftJob.Status.RUNNING).update(
            step=step[:200], progress=round(min(max(fraction, 0.0), 1.0), 3), heartbeat_at=timezone.now())

    try:
        settings = DriftSettings.objects.filter(service=job.service).select_related("project").first()
        if settings is None:
            raise PortalError("The service's drift settings are gone; pick a reference again.", fields={"reference": "not set"})
        report = compute_drift(service=job.service, settings=settings, trigger="demand", actor=job.requested_by,
                               since=job.since, until=job.until, progress=progress)
    except PortalError as exc:  # nothing to compare, a reference gone: the user's to change
        _close(job_id, DriftJob.Status.FAILED, error=exc.message, step="Failed")
        return DriftJob.Status.FAILED
    except SoftTimeLimitExceeded:
        _close(job_id, DriftJob.Status.FAILED, step="Failed",
               error="The drift check ran past the worker's time limit; compare a shorter window (since/until).")
        return DriftJob.Status.FAILED
    except Exception as exc:
        log.exception("drift job %s of service %s failed", job_id, job.service_id)
        _close(job_id, DriftJob.Status.FAILED, step="Failed",
               error=f"The drift check failed on the worker ({type(exc).__name__}: {exc}); the worker's log has the details.")
        return DriftJob.Status.FAILED
    _close(job_id, DriftJob.Status.SUCCEEDED, report=report, progress=1.0, step="Done")
    return DriftJob.Status.SUCCEEDED
