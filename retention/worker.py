"""The worker side of retention: the daily sweep (``retention.tasks.apply_retention``) that applies
each workspace's policy (``retention.services`` sets it): it deletes runs' log and output files and
the Docker images no service uses, then prunes the portal's own dangling image layers, so the space
really comes back; and the removal of a deleted service's images (``remove_images_of_deleted_service``).
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from registry.models import Image
from retention.models import RetentionPolicy
from retention.selectors import policy_of, retention_plan
from runs.models import Run, RunLogChunk, RunOutput
from workspaces.models import Workspace

logger = logging.getLogger(__name__)


def _clear_run_files(run_id, *, note: str) -> int:
    """Deletes a finished run's output files and its log (one line says why); the run, its
    metrics, params and snapshot stay. Returns the bytes freed."""
    from core.storage import delete_files
    from runs.worker import run_append_log

    run = Run.objects.filter(id=run_id).exclude(status__in=Run.ACTIVE).first()
    if run is None:
        return 0
    outputs = list(RunOutput.objects.filter(run_id=run_id).values_list("storage_name", "size"))
    with transaction.atomic():
        RunOutput.objects.filter(run_id=run_id).delete()
        RunLogChunk.objects.filter(run_id=run_id).delete()
        Run.objects.filter(id=run_id).update(log_bytes=0, log_truncated=False)
    delete_files(name for name, _size in outputs)
    run_append_log(run_id=run_id, workspace_id=run.workspace_id, lines=[note])
    # The note is not counted: a cleared run has nothing left for retention to free.
    Run.objects.filter(id=run_id).update(log_bytes=0)
    return sum(size for _, size in outputs) + (run.log_bytes or 0)


def _remove_image(image_id, *, by: str = "retention") -> tuple[int, str | None]:
    """Deletes an image no service uses from the engine and the registry; (bytes, error or None).
    The engine call holds no lock (registry.worker.image_remove)."""
    from compute.engine import EngineError
    from core.errors import Conflict
    from registry.worker import image_remove

    image = Image.objects.filter(pk=image_id, status__in=[Image.Status.SUCCEEDED, Image.Status.FAILED]).first()
    if image is None:
        return 0, None
    try:
        removed = image_remove(image_id=image.pk, detail={"by": by})
    except Conflict:
        return 0, None
    except EngineError as exc:
        return 0, f"{image.tag}: {exc}"
    return (removed.size or 0) if removed else 0, None


def images_of_deleted_service_remove(*, workspace_id, image_ids: list[str], service_name: str = "") -> dict:
    """Deletes the images a deleted service served (its record and the engine's image) that
    nothing else uses: no other service runs one, live or being removed, and no other service's
    history names one (a rollback target). When the workspace's retention has a rule for unused
    images (keep N days or the last N), that rule decides instead, at its next sweep.
    Returns {"images": n, "bytes": freed, "errors": [...], "left_to_retention": bool}."""
    from deployments.models import ServiceRevision

    summary = {"images": 0, "bytes": 0, "errors": [], "left_to_retention": False}
    workspace = Workspace.objects.filter(pk=workspace_id).first()
    if workspace is None:
        return summary
    policy = policy_of(workspace)
    if policy.unused_images_keep_days is not None or policy.unused_images_keep_last is not None:
        summary["left_to_retention"] = True
        return summary
    named = set(ServiceRevision.objects.filter(image_id__in=image_ids).values_list("image_id", flat=True))
    for image_id in image_ids:
        if any(str(i) == str(image_id) for i in named):  # another service's history still names it
            continue
        freed, error = _remove_image(image_id, by=f"service {service_name} deleted" if service_name else "service deleted")
        if error:
            summary["errors"].append(error)
            logger.warning("could not remove the image of a deleted service: %s", error)
        elif freed or not Image.objects.filter(pk=image_id).exists():
            summary["images"] += 1
            summary["bytes"] += freed
    return summary


def retention_apply(*, workspace_id=None) -> dict:
    """Applies retention in one workspace (or all), then removes the environment images nothing
    uses (portal-wide: retention.envimages) and prunes the portal's dangling image layers.
    Returns {"runs": n, "images": n, "bytes": freed, "environment_images": n,
    "environment_image_bytes": freed, "layers": n, "layer_bytes": freed, "capture_rows": n,
    "errors": [...], "environment_images_left_to_others": [tags another portal built: forgotten here,
    left in the engine]}; captured scoring data older than the policy's capture_keep_days goes too."""
    from compute.engine import EngineError
    from compute.images import prune_dangling
    from deployments.worker import LABEL_PORTAL
    from workspaces.instance import portal_instance

    now = timezone.now()
    summary = {"runs": 0, "images": 0, "bytes": 0, "layers": 0, "layer_bytes": 0, "capture_rows": 0, "errors": []}
    workspaces = Workspace.objects.all() if workspace_id is None else Workspace.objects.filter(pk=workspace_id)
    note = f"[mlportal] log and outputs removed by the workspace's retention on {now:%Y-%m-%d %H:%M} UTC"
    for workspace in workspaces:
        if not RetentionPolicy.objects.filter(workspace=workspace).exists():
            continue
        plan = retention_plan(workspace, now=now)
        for run in plan.runs:
            summary["bytes"] += _clear_run_files(run["id"], note=note)
            summary["runs"] += 1
        for image in plan.images:
            freed, error = _remove_image(image["id"])
            if error:
                summary["errors"].append(error)
                continue
            summary["bytes"] += freed
            summary["images"] += 1
        keep_capture = RetentionPolicy.objects.filter(workspace=workspace).values_list("capture_keep_days", flat=True).first()
        if keep_capture:
            from monitoring.store import apply_capture_retention

            summary["capture_rows"] += apply_capture_retention(workspace_id=workspace.pk, keep_days=keep_capture, today=now.date())
        RetentionPolicy.objects.filter(workspace=workspace).update(last_applied_at=now)
    from retention.envimages import environment_images_remove

    environment = environment_images_remove(now=now)
    summary["environment_images"], summary["environment_image_bytes"] = environment["images"], environment["bytes"]
    summary["errors"] += environment["errors"]
    summary["environment_images_left_to_others"] = environment["others"]
    try:
        summary["layers"], summary["layer_bytes"] = prune_dangling(label=LABEL_PORTAL, value=portal_instance(),
                                                                   base_url=settings.MLPORTAL_DOCKER_URL)
    except EngineError as exc:
        summary["errors"].append(f"pruning dangling layers: {exc}")
    if summary["runs"] or summary["images"] or summary["environment_images"] or summary["layers"]:
        logger.info("retention freed %s", summary)
    return summary
