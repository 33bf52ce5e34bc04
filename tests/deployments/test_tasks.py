"""The deploy tasks' Celery settings, as the worker sees them."""
import pytest
from django.conf import settings

from mlportal.celery import app

TASKS = ["deploy_service", "update_service", "delete_service", "reconcile_services"]


@pytest.mark.parametrize("name", TASKS)
def test_each_task_goes_to_the_deploy_queue_with_its_time_limits(name):
    app.loader.import_default_modules()
    app.finalize(auto=True)
    task = app.tasks[f"deployments.tasks.{name}"]
    assert app.amqp.router.route({}, task.name)["queue"].name == "deploy"
    assert (task.soft_time_limit, task.time_limit) == settings.CELERY_QUEUE_TIME_LIMITS["deploy"]


@pytest.mark.parametrize("name", ["deploy_service", "update_service", "delete_service"])
def test_the_guarded_tasks_ack_late_because_their_guards_make_them_idempotent(name):
    app.loader.import_default_modules()
    task = app.tasks[f"deployments.tasks.{name}"]
    assert task.acks_late is True and task.reject_on_worker_lost is True


def test_beat_runs_reconcile_every_30_seconds():
    assert settings.CELERY_BEAT_SCHEDULE["reconcile-services"] == {
        "task": "deployments.tasks.reconcile_services", "schedule": 30.0}


def test_beat_looks_at_the_swarm_tasks_every_5_seconds_on_the_maintenance_queue():
    from mlportal.celery import app

    assert settings.CELERY_BEAT_SCHEDULE["watch-swarm-tasks"] == {
        "task": "deployments.tasks.watch_swarm_tasks", "schedule": 5.0}
    app.loader.import_default_modules()
    assert app.amqp.router.route({}, "deployments.tasks.watch_swarm_tasks")["queue"].name == "celery"


def test_a_lease_outlasts_no_deploy_task():
    from deployments.worker import LEASE_SECONDS

    assert LEASE_SECONDS >= settings.CELERY_QUEUE_TIME_LIMITS["deploy"][1]
