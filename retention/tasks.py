"""The daily retention sweep (beat; routed to the maintenance worker's default queue)."""
from celery import shared_task

from retention import worker


@shared_task(ignore_result=True)
def apply_retention(workspace_id: str | None = None) -> dict:
    return worker.retention_apply(workspace_id=workspace_id)


@shared_task(ignore_result=True)
def remove_images_of_deleted_service(workspace_id: str, image_ids: list[str], service_name: str = "") -> dict:
    return worker.images_of_deleted_service_remove(workspace_id=workspace_id, image_ids=image_ids,
                                                   service_name=service_name)
