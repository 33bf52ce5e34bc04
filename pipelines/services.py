"""Request side of pipelines: create, change, delete, trigger. Each checks (``checks``), writes
rows and enqueues on commit; none waits on a run, a build or a service (``worker`` does).

A trigger takes the pipeline's row lock, so two triggers at once are decided one after the other:
the first gets a queued pipeline run, the second is queued behind it or recorded as skipped, as
the pipeline says (``when_busy``). A queued run that already waits absorbs further triggers (it
trains on the newest data anyway), which are recorded as skipped naming it.
"""
from __future__ import annotations

import uuid
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from deployments.models import Service
from pipelines import checks
from pipelines.models import Pipeline, PipelineRun, PipelineStep
from runs.models import Project, ProjectFile, Target
from core.errors import Conflict, NotFound, PortalError
from workspaces.models import Role, Workspace
from workspaces.services import activity_record, check_name, require_role

FIELDS = ("name", "description", "project", "script", "args", "target", "output_path", "model_name", "service", "gate",
          "mode", "when_busy", "rollout", "canary_weight", "canary_bake_seconds", "requirements_path", "enabled", "schedule", "trigger_on_data",
          "trigger_on_drift")
UPDATABLE = set(FIELDS) - {"project", "service"}


def _field_error(field: str, message: str, *, code: str | None = None) -> PortalError:
    return PortalError(message, code=code, fields={field: message})


def _find(qs, ref: Any):
    ref = str(ref or "").strip()
    if not ref:
        return None
    try:
        return qs.filter(pk=uuid.UUID(ref)).first()
    except ValueError:
        return qs.filter(name=ref).first()


def find_service(workspace: Workspace, ref: Any) -> Service:
    """The workspace's service named (or with the id) ``ref``; NotFound otherwise, so a service of
    another workspace reads exactly like one that does not exist."""
    if isinstance(ref, Service):
        service = ref if ref.workspace_id == workspace.pk else None
    else:
        service = _find(Service.objects.filter(workspace=workspace).select_related("image__manifest"), ref)
    if service is None:
        raise NotFound(f"No service {str(ref)[:80]!r} in workspace '{workspace.name}'.",
                       fields={"service": "Unknown service."})
    return service


def _find_project(workspace: Workspace, ref: Any) -> Project:
    project = ref if isinstance(ref, Project) and ref.workspace_id == workspace.pk else _find(
        Project.objects.filter(workspace=workspace), ref)
    if project is None:
        raise NotFound(f"No project {str(ref)[:80]!r} in workspace '{workspace.name}'.",
                       fields={"project": "Unknown project."})
    return project


def served_models(service: Service) -> list:
    """The model versions the service's current image bundles, in manifest order."""
    return list(service.image.manifest.model_versions.order_by("manifest_models__position"))


def _clean(workspace: Workspace, values: dict) -> dict:
    """Every field checked; returns the values to store. Raises at the first field at fault."""
    from core.paths import clean_path
    from runs import checks as runs_checks

    out: dict[str, Any] = {}
    out["name"] = check_name(values.get("name") or "", what="pipeline name")
    out["description"] = str(values.get("description") or "")[:5000]
    project = _find_project(workspace, values.get("project"))
    out["project"] = project
    script = clean_path(values.get("script") or "", field="script")
    scripts = sorted(ProjectFile.objects.filter(project=project, path__endswith=".py").values_list("path", flat=True)[:200])
    if script not in scripts:
        raise _field_error("script", f"Project '{project.name}' has no Python file {script!r}; its scripts: "
                                     f"{', '.join(scripts[:20]) or 'none, upload one first'}.", code="unknown_script")
    out["script"] = script
    args = values.get("args")
    out["args"] = runs_checks.check_args(args) if args not in (None, "") else []
    target = values.get("target") or project.default_target
    if target not in Target.values or target == "external":
        raise _field_error("target", f"Unknown compute target {str(target)[:20]!r}: use docker or local.")
    out["target"] = target
    out["output_path"] = checks.check_output_path(values.get("output_path"))
    service = find_service(workspace, values.get("service"))
    out["service"] = service
    models = served_models(service)
    model_name = str(values.get("model_name") or "").strip()
    names = [m.name for m in models]
    if model_name and model_name not in names:
        raise _field_error("model_name", f"Service '{service.name}' serves {', '.join(m.ref for m in models)}; "
                                         f"model {model_name[:80]!r} is not among them: name one of {', '.join(names)}.")
    if not model_name and len(set(names)) > 1:
        raise _field_error("model_name", f"Service '{service.name}' serves several models ({', '.join(names)}): say which "
                                         "one the run's output is the next version of.")
    out["model_name"] = model_name
    checks.parse_gate(values.get("gate"))
    out["gate"] = str(values.get("gate") or "").strip()
    out["mode"] = checks.check_choice(values.get("mode"), Pipeline.Mode.values, field="mode", default=Pipeline.Mode.DEPLOY)
    out["when_busy"] = checks.check_choice(values.get("when_busy"), Pipeline.WhenBusy.values, field="when_busy",
                                           default=Pipeline.WhenBusy.QUEUE)
    out["rollout"] = checks.check_choice(values.get("rollout"), Pipeline.Rollout.values, field="rollout",
                                         default=Pipeline.Rollout.ROLLING)
    out["canary_weight"] = checks.check_int(values.get("canary_weight"), field="canary_weight", minimum=1, maximum=99,
                                            default=10, what="The canary's share (percent)")
    out["canary_bake_seconds"] = checks.check_int(values.get("canary_bake_seconds"), field="canary_bake_seconds",
                                                  minimum=10, maximum=7 * 24 * 3600, default=300,
                                                  what="The canary's bake period (seconds)")
    requirements = str(values.get("requirements_path") or "").strip()
    if requirements and not ProjectFile.objects.filter(project=project, path=requirements).exists():
        raise _field_error("requirements_path", f"Project '{project.name}' has no file {requirements[:80]!r}.")
    out["requirements_path"] = requirements
    out["enabled"] = _flag(values.get("enabled", True))
    schedule = checks.parse_schedule(values.get("schedule"))
    out["schedule"] = schedule.text if schedule else ""
    out["trigger_on_data"] = _flag(values.get("trigger_on_data", False))
    out["trigger_on_drift"] = _flag(values.get("trigger_on_drift", False))
    return out


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


def _sync_schedule(pipeline: Pipeline) -> None:
    """Keeps the pipeline's PeriodicTask (django-celery-beat) in step with its schedule: the beat
    reads these rows, so a schedule set or changed in the portal fires without a restart."""
    import json

    from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

    parsed = checks.parse_schedule(pipeline.schedule)
    task = pipeline.periodic_task
    if parsed is None:
        if task is not None:
            Pipeline.objects.filter(pk=pipeline.pk).update(periodic_task=None)
            pipeline.periodic_task = None
            task.delete()
        return
    fields = {"interval": None, "crontab": None}
    if parsed.interval is not None:
        fields["interval"], _ = IntervalSchedule.objects.get_or_create(every=parsed.interval, period=IntervalSchedule.SECONDS)
    else:
        minute, hour, day_of_month, month_of_year, day_of_week = parsed.cron
        fields["crontab"], _ = CrontabSchedule.objects.get_or_create(
            minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year, day_of_week=day_of_week,
            timezone="UTC")
    values = {**fields, "task": "pipelines.tasks.scheduled_trigger", "args": json.dumps([str(pipeline.pk)]),
              "enabled": pipeline.enabled, "description": f"Pipeline {pipeline.name} of workspace {pipeline.workspace.name}"}
    if task is None:
        task = PeriodicTask.objects.create(name=f"pipeline {pipeline.pk}", **values)
        Pipeline.objects.filter(pk=pipeline.pk).update(periodic_task=task)
        pipeline.periodic_task = task
    else:
        for key, value in values.items():
            setattr(task, key, value)
        task.save()


def pipeline_webhook_secret(*, pipeline: Pipeline, user, enable: bool = True) -> str:
    """Makes a new secret for the pipeline's incoming webhook (the old one stops working) and
    returns it: it is shown this once. ``enable=False`` turns the webhook off."""
    import secrets

    require_role(user=user, workspace=pipeline.workspace, role=Role.CONTRIBUTOR)
    secret = secrets.token_urlsafe(32) if enable else ""
    with transaction.atomic():
        Pipeline.objects.filter(pk=pipeline.pk).update(webhook_secret=secret)
        activity_record(workspace=pipeline.workspace, actor=user, verb="pipeline.webhook_secret", target=pipeline,
                        detail={"enabled": enable})
    pipeline.webhook_secret = secret
    return secret


def pipeline_create(*, workspace: Workspace, user, webhook: Any = False, **values) -> Pipeline:
    """Creates a pipeline of ``project`` targeting ``service``. Everything is checked before the row
    is written: a bad field raises PortalError naming it, a service or project of another workspace
    NotFound (404), and nothing is created. ``webhook``: give it an incoming webhook; its secret is
    on the returned pipeline (``webhook_secret``) and shown this once."""
    import secrets
    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise PortalError(f"Unknown pipeline field {unknown[0]!r}.", fields={k: "Unknown field." for k in unknown})
    clean = _clean(workspace, values)
    try:
        with transaction.atomic():
            pipeline = Pipeline.objects.create(workspace=workspace, created_by=user,
                                               webhook_secret=secrets.token_urlsafe(32) if _flag(webhook) else "", **clean)
            _sync_schedule(pipeline)
            activity_record(workspace=workspace, actor=user, verb="pipeline.created", target=pipeline,
                            detail={"project": clean["project"].name, "service": clean["service"].name,
                                    "gate": clean["gate"]})
    except IntegrityError:
        raise _field_error("name", f"Workspace '{workspace.name}' has a pipeline named '{clean['name']}' already: "
                                   "choose another name.") from None
    return pipeline


def pipeline_update(*, pipeline: Pipeline, user, changes: dict) -> Pipeline:
    """Changes a pipeline's settings (all but its project and service); checked as at create."""
    require_role(user=user, workspace=pipeline.workspace, role=Role.CONTRIBUTOR)
    unknown = sorted(set(changes) - UPDATABLE)
    if unknown:
        message = (f"{', '.join(unknown)} cannot be changed here" + (
            ": a pipeline keeps its project and service; create another pipeline for another one." if
            {"project", "service"} & set(unknown) else "."))
        raise PortalError(message, fields={k: "Cannot be changed." for k in unknown})
    current = {f: getattr(pipeline, f) for f in FIELDS if f not in ("project", "service")}
    current.update(project=pipeline.project, service=pipeline.service)
    clean = _clean(pipeline.workspace, {**current, **changes})
    changed = [f for f in changes if clean[f] != current[f]]
    if changed:
        try:
            with transaction.atomic():
                for field in changed:
                    setattr(pipeline, field, clean[field])
                pipeline.save(update_fields=[*changed, "updated_at"])
                if {"schedule", "enabled", "name"} & set(changed):
                    _sync_schedule(pipeline)
                activity_record(workspace=pipeline.workspace, actor=user, verb="pipeline.updated", target=pipeline,
                                detail={"fields": changed})
        except IntegrityError:
            raise _field_error("name", f"Workspace '{pipeline.workspace.name}' has a pipeline named "
                                       f"'{clean['name']}' already: choose another name.") from None
    return pipeline


def pipeline_delete(*, pipeline: Pipeline, user) -> None:
    """Deletes a pipeline and its history; refused (409) while one of its runs is going."""
    require_role(user=user, workspace=pipeline.workspace, role=Role.OWNER)
    with transaction.atomic():
        Pipeline.objects.select_for_update().filter(pk=pipeline.pk).first()
        going = pipeline.runs.filter(status=PipelineRun.Status.RUNNING).first()
        if going is not None:
            raise Conflict(f"Pipeline run {going} is going: cancel it or wait for it to end, then delete the pipeline.",
                           code="busy")
        activity_record(workspace=pipeline.workspace, actor=user, verb="pipeline.deleted", target=pipeline)
        task = pipeline.periodic_task
        pipeline.delete()
        if task is not None:
            task.delete()


def _new_run(pipeline: Pipeline, *, status: str, trigger: str, detail: str, user, reason: str = "") -> PipelineRun:
    number = (PipelineRun.objects.filter(pipeline=pipeline).aggregate(n=Max("number"))["n"] or 0) + 1
    return PipelineRun.objects.create(workspace_id=pipeline.workspace_id, pipeline=pipeline, number=number, status=status,
                                      trigger=trigger, trigger_detail=detail[:500], triggered_by=user, reason=reason)


def pipeline_trigger(*, pipeline: Pipeline, user=None, trigger: str = PipelineRun.Trigger.MANUAL,
                     detail: str = "") -> PipelineRun:
    """Starts a retraining: returns the new queued pipeline run, or a skipped one when the pipeline
    is busy and skips triggers meanwhile (or one is queued already). ``user`` None: an automatic
    trigger (schedule, new data, webhook), which acts as the pipeline's creator and does nothing
    for a disabled pipeline."""
    from pipelines.tasks import start_pipeline

    if user is not None:
        require_role(user=user, workspace=pipeline.workspace, role=Role.CONTRIBUTOR)
    with transaction.atomic():
        locked = Pipeline.objects.select_for_update().filter(pk=pipeline.pk).first()
        if locked is None:
            raise NotFound("Not found: the pipeline was deleted.")
        if user is None and not locked.enabled:
            return _new_run(locked, status=PipelineRun.Status.SKIPPED, trigger=trigger, detail=detail, user=None,
                            reason="The pipeline is disabled: automatic triggers are recorded, not run.")
        active = list(locked.runs.filter(status__in=PipelineRun.ACTIVE).order_by("number"))
        waiting = next((r for r in active if r.status == PipelineRun.Status.QUEUED), None)
        going = next((r for r in active if r.status == PipelineRun.Status.RUNNING), None)
        if waiting is not None and user is None:
            # New data, a schedule or a webhook while a run waits: that run trains on it anyway.
            note = f"{waiting.trigger_detail}; also {trigger}: {detail}" if waiting.trigger_detail else f"{trigger}: {detail}"
            PipelineRun.objects.filter(pk=waiting.pk).update(trigger_detail=note[:500])
            waiting.trigger_detail = note[:500]
            return waiting
        if waiting is not None:
            run = _new_run(locked, status=PipelineRun.Status.SKIPPED, trigger=trigger, detail=detail, user=user,
                           reason=f"Pipeline run #{waiting.number} is queued already and trains on the newest data.")
        elif going is not None and locked.when_busy == Pipeline.WhenBusy.SKIP:
            run = _new_run(locked, status=PipelineRun.Status.SKIPPED, trigger=trigger, detail=detail, user=user,
                           reason=f"Pipeline run #{going.number} was going; this pipeline skips triggers that arrive "
                                  "meanwhile (when busy: skip).")
        else:
            run = _new_run(locked, status=PipelineRun.Status.QUEUED, trigger=trigger, detail=detail, user=user)
            PipelineStep.objects.bulk_create([PipelineStep(pipeline_run=run, position=i, name=name)
                                              for i, name in enumerate(PipelineStep.ORDER)])
            pid = str(locked.pk)
            transaction.on_commit(lambda: start_pipeline.delay(pid))
        activity_record(workspace=locked.workspace, actor=user, verb=f"pipeline.{'triggered' if run.status == 'queued' else 'skipped'}",
                        target=locked, detail={"number": run.number, "trigger": trigger, "detail": detail[:200]})
    return run


def pipeline_run_cancel(*, pipeline_run: PipelineRun, user) -> PipelineRun:
    """Cancels a queued pipeline run, or a running one between steps: the step under way is
    left to finish on its own (a run, a build), but nothing after it happens."""
    from django.utils import timezone

    require_role(user=user, workspace=pipeline_run.workspace, role=Role.CONTRIBUTOR)
    moved = PipelineRun.objects.filter(pk=pipeline_run.pk, status__in=PipelineRun.ACTIVE).update(
        status=PipelineRun.Status.CANCELED, reason=f"Canceled by {user.username}.", ended_at=timezone.now())
    if not moved:
        pipeline_run.refresh_from_db()
        raise Conflict(f"Pipeline run {pipeline_run} is {pipeline_run.status} already.", code="finished")
    PipelineStep.objects.filter(pipeline_run=pipeline_run, status__in=[PipelineStep.Status.PENDING]).update(
        status=PipelineStep.Status.SKIPPED)
    activity_record(workspace=pipeline_run.workspace, actor=user, verb="pipeline.canceled", target=pipeline_run.pipeline,
                    detail={"number": pipeline_run.number})
    from pipelines.tasks import start_pipeline

    pid = str(pipeline_run.pipeline_id)
    transaction.on_commit(lambda: start_pipeline.delay(pid))
    pipeline_run.refresh_from_db()
    return pipeline_run


def drift_signal_record(*, service: Service, detail: dict | None = None):
    """What the drift detector calls when a service's inputs or predictions drifted: records the
    signal (sent to webhooks as ``drift.detected``) and starts the service's pipelines that
    retrain on drift. Returns (signal, pipeline runs)."""
    from pipelines.models import DriftSignal

    detail = dict(detail or {})
    with transaction.atomic():
        signal = DriftSignal.objects.create(workspace_id=service.workspace_id, service=service, detail=detail)
    summary = ", ".join(f"{k}={v}" for k, v in list(detail.items())[:5]) or "drift detected"
    runs = [pipeline_trigger(pipeline=p, trigger=PipelineRun.Trigger.DRIFT, detail=summary[:500])
            for p in Pipeline.objects.filter(service=service, trigger_on_drift=True, enabled=True)]
    return signal, runs
