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


class QueueTimeLimits:
    """Task annotation (CELERY_TASK_ANNOTATIONS): each task gets the time limits of the queue it is
    routed to, unless it set its own on purpose. Annotations apply whenever a task is registered,
    so a tasks module imported late (web process, tests) gets them too."""

    @staticmethod
    def annotate(task) -> dict | None:
        from django.conf import settings

        queue = "celery"
        routes = settings.CELERY_TASK_ROUTES
        if task.name in routes:  # an exact name wins over a pattern, as in Celery's own routing
            queue = routes[task.name]["queue"]
        else:
            for pattern, route in routes.items():
                if pattern.endswith("*") and task.name.startswith(pattern[:-1]):
                    queue = route["queue"]
        soft, hard = queue_time_limits(queue)
        limits = {}
        if task.soft_time_limit is None:
            limits["soft_time_limit"] = soft
        if task.time_limit is None:
            limits["time_limit"] = hard
        return limits or None


@task_prerun.connect
def _close_stale_db_connections(**_kwargs) -> None:
    from django.db import close_old_connections

    close_old_connections()
