"""Thin tasks on the default (maintenance) queue: start a pipeline's next run, advance a running
one (it re-schedules itself while a step waits), and the periodic sweep."""
from __future__ import annotations

from celery import shared_task
from django.conf import settings


@shared_task
def start_pipeline(pipeline_id: str) -> str | None:
    from pipelines import worker

    run_id = worker.pipeline_start_next(pipeline_id=pipeline_id)
    if run_id:
        advance_pipeline_run.delay(run_id)
    return run_id


@shared_task
def advance_pipeline_run(run_id: str) -> str | None:
    from pipelines import worker

    outcome = worker.pipeline_run_advance(run_id=run_id)
    if outcome == worker.WAIT:
        advance_pipeline_run.apply_async((run_id,), countdown=settings.MLPORTAL_PIPELINE_POLL_SECONDS)
    return outcome


@shared_task
def sweep_pipelines() -> dict:
    from pipelines import worker

    return worker.pipelines_sweep()
