"""Celery discovers the monitoring tasks here; collection and the hourly drift live in worker.py."""
from celery import shared_task

from monitoring.worker import collect_capture, compute_drift_task  # noqa: F401


@shared_task(name="monitoring.tasks.compute_drift_job")
def compute_drift_job(job_id: int) -> str | None:
    """A drift check asked for on demand (POST drift/), on the maintenance queue."""
    from monitoring.drift_jobs import drift_job_run

    return drift_job_run(job_id=job_id)


@shared_task(name="monitoring.tasks.remove_service_capture", acks_late=True, reject_on_worker_lost=True)
def remove_service_capture(service_id: str) -> int:
    """Sent after the commit that deleted a service's row (monitoring/receivers.py); idempotent,
    so a worker lost on the way runs it again."""
    from monitoring.cleanup import service_capture_remove

    return service_capture_remove(service_id=service_id)
