"""Request side of model data collection: the capture switch, drift settings, ground truth, data to a project."""
import hashlib
import hmac

from django.conf import settings

from core.errors import PortalError

from .checks import check_capture, check_drift_settings, check_range
from .models import Capture, DriftSettings


def internal_key(service) -> str:
    """The key the worker pulls a service's replicas with (derived, never stored or shown)."""
    return hmac.new(settings.SECRET_KEY.encode(), f"mlportal-capture:{service.pk}".encode(), hashlib.sha256).hexdigest()


def capture_of(service) -> dict:
    capture = Capture.objects.filter(service=service).first()
    if capture is None:
        return {"mode": "off", "percent": 100.0, "dropped": 0, "last_collected_at": None}
    return {"mode": capture.mode, "percent": capture.percent, "dropped": capture.dropped,
            "last_collected_at": capture.last_collected_at}


def set_capture(*, service, value, user) -> dict:
    """Validates then saves the switch; the replicas get it with the next pull (no redeploy)."""
    from workspaces.models import Role
    from workspaces.services import activity_record, require_role

    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    changes = check_capture(value)
    capture, _ = Capture.objects.get_or_create(service=service)
    for name, field_value in changes.items():
        setattr(capture, name, field_value)
    capture.save()
    activity_record(workspace=service.workspace, actor=user, verb="service.capture_changed", target=service,
                    detail={"mode": capture.mode, "percent": capture.percent})
    return capture_of(service)


def container_env(service) -> dict[str, str]:
    """What a new replica starts with: the internal key and the switch as it is now."""
    capture = Capture.objects.filter(service=service).first()
    env = {"MLPORTAL_INTERNAL_KEY": internal_key(service),
           "MLPORTAL_CAPTURE_SPOOL_ROWS": str(settings.MLPORTAL_CAPTURE_SPOOL_ROWS)}
    versions = [f"{m.name}:{m.version}" for m in service.image.manifest.model_versions.order_by("name")]
    if versions:
        env["MLPORTAL_MODEL_VERSION"] = ",".join(versions)
    if capture is not None:
        env["MLPORTAL_CAPTURE_MODE"] = capture.mode
        env["MLPORTAL_CAPTURE_PERCENT"] = f"{capture.percent:g}"
    return env


# --- drift -------------------------------------------------------------------------------------

def _resolve_project(service, ref: str):
    from runs.models import Project
    from core.api_base import is_uuid

    projects = Project.objects.filter(workspace_id=service.workspace_id)
    project = (projects.filter(pk=ref).first() if is_uuid(ref) else None) or projects.filter(name=ref).first()
    if project is None:
        raise PortalError(f"No project {ref!r} in workspace {service.workspace.name}; name one of its projects.",
                          fields={"project": "no such project in this workspace"})
    return project


def _check_reference(settings: DriftSettings) -> None:
    """The reference the settings name exists; raises naming the field to change."""
    if settings.reference == DriftSettings.Reference.FILE:
        if settings.project_id is None:
            raise PortalError("Name the project whose data file is the reference (project).", fields={"project": "required"})
        if not settings.path:
            raise PortalError("Name the reference data file (path), e.g. data/CATelcoCustomerChurnTrainingSample.csv.",
                              fields={"path": "required"})
        from runs.models import ProjectFile

        if not ProjectFile.objects.filter(project_id=settings.project_id, path=settings.path).exists():
            raise PortalError(f"Project {settings.project.name} has no file {settings.path!r}; pick one of its data files.",
                              fields={"path": "no such file in the project"})
        if not settings.path.lower().endswith((".csv", ".parquet")):
            raise PortalError("The reference file must be a .csv or .parquet file.", fields={"path": "not CSV or Parquet"})
    else:
        if settings.window_start is None or settings.window_end is None:
            raise PortalError("A capture window reference needs window_start and window_end.",
                              fields={"window_start" if settings.window_start is None else "window_end": "required"})
        check_range(settings.window_start, settings.window_end, since_name="window_start", until_name="window_end")


def drift_settings_update(*, service, value, user) -> DriftSettings:
    """Validates and saves a service's drift settings (all or nothing); contributors only."""
    from workspaces.models import Role
    from workspaces.services import activity_record, require_role

    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    changes = check_drift_settings(value)
    settings = DriftSettings.objects.filter(service=service).first() or DriftSettings(service=service)
    if "project" in changes:
        settings.project = _resolve_project(service, changes.pop("project")) if changes["project"] else None
    for name, field_value in changes.items():
        setattr(settings, name, field_value)
    if settings.reference == DriftSettings.Reference.FILE and settings.project_id is None:
        from runs.models import ProjectFile

        # The file may be named alone when exactly one project of the workspace has it.
        owners = list(ProjectFile.objects.filter(workspace_id=service.workspace_id, path=settings.path)
                      .values_list("project_id", flat=True)[:2]) if settings.path else []
        if len(owners) == 1:
            settings.project_id = owners[0]
    _check_reference(settings)
    settings.save()
    activity_record(workspace=service.workspace, actor=user, verb="service.drift_settings_changed", target=service,
                    detail={"reference": settings.reference, "path": settings.path,
                            "share_threshold": settings.share_threshold, "feature_threshold": settings.feature_threshold})
    return settings


def _close_stale_jobs(service) -> None:
    """Closes the service's open drift job whose worker has said nothing for STALE_SECONDS (the
    worker died, or the broker lost the message), so a new check can start."""
    import datetime as dt

    from django.utils import timezone

    from .models import DriftJob

    cutoff = timezone.now() - dt.timedelta(seconds=DriftJob.STALE_SECONDS)
    DriftJob.objects.filter(service=service, status__in=DriftJob.OPEN, heartbeat_at__lt=cutoff).update(
        status=DriftJob.Status.FAILED, finished_at=timezone.now(), step="Failed",
        error=f"No worker worked on this check for {DriftJob.STALE_SECONDS // 60} minutes (is the maintenance worker running?); "
              "it was given up.")


def drift_job_start(*, service, user, since=None, until=None):
    """Starts a drift check against the saved reference (the Data tab's and the CLI's "check now")
    and returns its DriftJob at once; the maintenance worker computes it. While one is queued or
    running, that one is returned instead of a second."""
    from django.db import IntegrityError, transaction

    from workspaces.models import Role
    from workspaces.services import require_role

    from .models import DriftJob
    from .tasks import compute_drift_job

    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    settings = DriftSettings.objects.filter(service=service).select_related("project").first()
    if settings is None:
        raise PortalError("Pick a reference first: a project data file or a time window of capture (drift settings).",
                          fields={"reference": "not set"})
    check_range(since, until)
    _check_reference(settings)
    _close_stale_jobs(service)
    for _ in range(2):  # an open job that ends between our insert and our read: insert again
        try:
            with transaction.atomic():
                job = DriftJob.objects.create(service=service, since=since, until=until, requested_by=user)
                transaction.on_commit(lambda: compute_drift_job.delay(job.pk))
            return job
        except IntegrityError:  # drift_job_one_open: a check is already queued or running
            job = DriftJob.objects.filter(service=service, status__in=DriftJob.OPEN).first()
            if job is not None:
                return job
    raise PortalError("A drift check of this service started and ended just now; look at its report.", code="conflict")


# --- ground truth ------------------------------------------------------------------------------

def ground_truth_add(*, service, pairs: list[tuple[str, str]], user) -> dict:
    """Stores (request id, label) pairs (a later label for the same id replaces the earlier one).
    Ids that match no captured row yet are stored too (their row may not be pulled yet), counted
    and reported."""
    from django.db import transaction

    from workspaces.models import Role
    from workspaces.services import activity_record, require_role

    from .models import CapturedRow, GroundTruth

    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    latest = dict(pairs)
    ids = list(latest)
    known: set[str] = set()
    for start in range(0, len(ids), 5000):
        known |= set(CapturedRow.objects.filter(service=service, request_id__in=ids[start:start + 5000])
                     .values_list("request_id", flat=True))
    with transaction.atomic():
        GroundTruth.objects.bulk_create(
            [GroundTruth(service=service, request_id=rid, label=label) for rid, label in latest.items()],
            update_conflicts=True, unique_fields=["service", "request_id"], update_fields=["label", "received_at"])
    unknown = [rid for rid in ids if rid not in known]
    activity_record(workspace=service.workspace, actor=user, verb="service.ground_truth_added", target=service,
                    detail={"labels": len(ids), "unknown": len(unknown)})
    return {"received": len(pairs), "stored": len(ids), "matched": len(ids) - len(unknown), "unknown": len(unknown),
            "unknown_request_ids": unknown[:20]}


# --- data ---------------------------------------------------------------------------------------

def data_to_project(*, service, project_ref: str, path: str, since=None, until=None, user):
    """Writes the captured rows of [since, until) into a project as a CSV data file (the start of
    a retraining run): one column per input field, named as the schema names it."""
    from runs.services import project_file_put
    from workspaces.models import Role
    from workspaces.services import require_role

    from .selectors import captured_frame, input_features

    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    check_range(since, until)
    project = _resolve_project(service, project_ref)
    path = (path or "").strip()
    if not path.lower().endswith(".csv"):
        raise PortalError("path must name a .csv file in the project, e.g. data/captured.csv.", fields={"path": "a .csv path"})
    frame = captured_frame(service, since=since, until=until)
    if frame.empty:
        raise PortalError("Nothing was captured in that time range; widen it or turn capture on.", fields={"since": "no rows"})
    features = input_features(frame.columns)
    keep = ["request_id", "time", *(["revision"] if "revision" in frame else []), "model_version", *features.values()] + (
        ["prediction"] if "prediction" in frame else [])
    out = frame[keep].rename(columns={column: name for name, column in features.items()})
    return project_file_put(project=project, path=path, content=out.to_csv(index=False).encode(), user=user), len(out)
