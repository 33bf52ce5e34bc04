"""The Celery application: apps declare tasks with @shared_task and never import this module."""
import os

from celery import Celery
from celery.signals import task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlportal.settings")

app = Celery("mlportal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def queue_time_limits(queue: str) -> tuple[int, int]:
    """Returns the (soft, hard) time limit in seconds that tasks routed to `queue` run under."""
    from django.conf import settings

    return settings.CELERY_QUEUE_TIME_LIMITS.get(queue, settings.CELERY_QUEUE_TIME_LIMITS["celery"])


@app.on_after_finalize.connect
def _apply_queue_time_limits(sender: Celery, **_kwargs) -> None:
    # Each task gets the limits of the queue it is routed to, unless it set its own on purpose.
    from django.conf import settings

    for name, task in sender.tasks.items():
        queue = "celery"
        for pattern, route in settings.CELERY_TASK_ROUTES.items():
            if name.startswith(pattern.rstrip("*")):
                queue = route["queue"]
        soft, hard = queue_time_limits(queue)
        if task.soft_time_limit is None:
            task.soft_time_limit = soft
        if task.time_limit is None:
            task.time_limit = hard


@task_prerun.connect
def _close_stale_db_connections(**_kwargs) -> None:
    from django.db import close_old_connections

    close_old_connections()
