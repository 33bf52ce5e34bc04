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


@shared_task
def scheduled_trigger(pipeline_id: str) -> str | None:
    """What the beat sends at each tick of a pipeline's schedule (a PeriodicTask row)."""
    from pipelines import services
    from pipelines.models import Pipeline, PipelineRun

    pipeline = Pipeline.objects.filter(pk=pipeline_id).first()
    if pipeline is None:
        return None
    run = services.pipeline_trigger(pipeline=pipeline, trigger=PipelineRun.Trigger.SCHEDULE, detail=pipeline.schedule)
    return str(run.pk)


@shared_task
def data_trigger(project_id: str, paths: list[str]) -> list[str]:
    """Starts the pipelines of a project that retrain on new data (a file under data/ changed)."""
    from pipelines import services
    from pipelines.models import Pipeline, PipelineRun

    started = []
    for pipeline in Pipeline.objects.filter(project_id=project_id, trigger_on_data=True, enabled=True):
        detail = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        run = services.pipeline_trigger(pipeline=pipeline, trigger=PipelineRun.Trigger.DATA, detail=detail)
        started.append(str(run.pk))
    return started


@shared_task
def deliver_webhook(delivery_id: str) -> float | None:
    from pipelines import webhooks

    wait = webhooks.delivery_attempt(delivery_id=delivery_id)
    if wait is not None:
        deliver_webhook.apply_async((delivery_id,), countdown=wait)
    return wait


@shared_task
def scan_webhook_events() -> int:
    """Beat: makes the deliveries of what happened since the last scan; re-sends lost retries."""
    from pipelines import webhooks

    made = webhooks.events_scan()
    for delivery_id in webhooks.deliveries_due():
        deliver_webhook.delay(delivery_id)
    return made


@shared_task
def drift_trigger(service_id: str, detail: dict) -> list[str]:
    """Model monitoring's drift event: a DriftSignal (the drift.detected webhook) and the pipelines
    of the service that retrain on drift."""
    from deployments.models import Service
    from pipelines import services

    service = Service.objects.filter(pk=service_id).first()
    if service is None:
        return []
    _, runs = services.drift_signal_record(service=service, detail=detail)
    return [str(r.pk) for r in runs]
