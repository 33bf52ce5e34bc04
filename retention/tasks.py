"""The daily retention sweep (beat; routed to the maintenance worker's default queue)."""
from celery import shared_task

from retention import services


@shared_task(ignore_result=True)
def apply_retention(workspace_id: str | None = None) -> dict:
    return services.retention_apply(workspace_id=workspace_id)
