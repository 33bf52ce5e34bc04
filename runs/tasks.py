"""Celery tasks of the runs app: thin wrappers over runs.worker and runs.reconcile."""
from celery import shared_task

from runs import reconcile, worker


# acks_late + reject_on_worker_lost: a run whose worker dies is redelivered, and the guarded
# queued → preparing claim in worker.execute makes that redelivery start nothing a second time.
@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def execute_run(run_id: str) -> str:
    return worker.execute(run_id)


@shared_task(ignore_result=True)
def sweep_lost_runs() -> dict:
    return reconcile.sweep_lost_runs()


@shared_task(ignore_result=True)
def requeue_lost_runs() -> dict:
    return reconcile.requeue_lost_runs()


@shared_task(ignore_result=True)
def prepare_run_charts(run_id: str) -> None:
    """Downsamples the series of a run an MLflow client just ended (off the request: a million
    points take seconds)."""
    worker.prepare_charts(run_id)
