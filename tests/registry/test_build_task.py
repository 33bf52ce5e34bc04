"""The build task's Celery settings, as the worker sees them."""
from django.conf import settings

from mlportal.celery import app


def test_the_build_task_goes_to_the_builds_queue_with_the_build_time_limits():
    app.loader.import_default_modules()
    task = app.tasks["registry.tasks.build_image"]
    assert app.amqp.router.route({}, task.name)["queue"].name == "builds"
    assert (task.soft_time_limit, task.time_limit) == (settings.MLPORTAL_BUILD_TIMEOUT, settings.MLPORTAL_BUILD_TIMEOUT + 120)


def test_the_build_task_acks_late_because_its_guard_makes_it_idempotent():
    app.loader.import_default_modules()
    task = app.tasks["registry.tasks.build_image"]
    assert task.acks_late is True and task.reject_on_worker_lost is True
