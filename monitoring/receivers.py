"""What monitoring does when other apps' rows go: a deleted service's captured files go after it.

Connected in MonitoringConfig.ready. ``post_delete`` of a Service is sent for every way its row
goes (the delete task, its workspace deleted with everything in it), and the files' removal is a
task sent on commit, so a deletion that rolls back keeps them and no request waits on storage.
"""
from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver


@receiver(post_delete, sender="deployments.Service", dispatch_uid="monitoring-capture-of-deleted-service")
def _service_deleted(sender, instance, using=None, **kwargs) -> None:
    from monitoring.tasks import remove_service_capture

    service_id = str(instance.pk)
    transaction.on_commit(lambda: remove_service_capture.delay(service_id), using=using)
