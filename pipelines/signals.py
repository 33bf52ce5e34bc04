"""The new-data trigger: a project file under ``data/`` that is added or whose content changes
(through the page, the API or the CLI: they all write through runs.services) starts the pipelines
of that project that retrain on new data, once per transaction however many files it wrote."""
from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

from runs.models import ProjectFile

DATA_PREFIX = "data/"


def _watched(project_id) -> bool:
    from pipelines.models import Pipeline

    return Pipeline.objects.filter(project_id=project_id, trigger_on_data=True, enabled=True).exists()


@receiver(pre_save, sender=ProjectFile)
def _remember_old_content(sender, instance: ProjectFile, **kwargs) -> None:
    instance._pipelines_new_data = False
    if not instance.path.startswith(DATA_PREFIX) or not _watched(instance.project_id):
        return
    old = ProjectFile.objects.filter(pk=instance.pk).values_list("sha256", flat=True).first()
    instance._pipelines_new_data = old != instance.sha256


@receiver(post_save, sender=ProjectFile)
def _trigger_on_new_data(sender, instance: ProjectFile, **kwargs) -> None:
    if not getattr(instance, "_pipelines_new_data", False):
        return
    connection = transaction.get_connection()
    # One task per project and outermost transaction, naming every data file it wrote.
    # (Each save registers the callback; the first to run takes every path, the rest find none.
    # After a rollback its paths stay behind and ride along with the next commit's trigger.)
    pending = connection.__dict__.setdefault("_pipelines_new_data", {})
    key = str(instance.project_id)
    pending.setdefault(key, []).append(instance.path)

    def send() -> None:
        from pipelines.tasks import data_trigger

        paths = pending.pop(key, [])
        if paths:
            data_trigger.delay(key, paths)

    transaction.on_commit(send)


def _drift_receiver(sender, service=None, report=None, trigger="", **kwargs) -> None:
    """Model monitoring found the service drifted (once per episode): record it and start the
    service's pipelines that retrain on drift, in a task (receivers must stay quick)."""
    from pipelines.tasks import drift_trigger

    features = [f.get("name") for f in (getattr(report, "features", None) or []) if isinstance(f, dict) and f.get("drifted")]
    detail = {"report": getattr(report, "pk", None), "share_drifted": getattr(report, "share_drifted", None),
              "features": features[:20], "trigger": trigger}
    drift_trigger.delay(str(service.pk), detail)


try:
    from monitoring.signals import drift_detected
except ImportError:  # a portal without model monitoring
    drift_detected = None
if drift_detected is not None:
    drift_detected.connect(_drift_receiver, dispatch_uid="pipelines.drift")
