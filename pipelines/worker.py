"""Worker side of pipelines: start the next queued pipeline run and advance a running one, step
by step. Each look is short: a step asks the request side of runs/registry/deployments for its
work (``run_submit``, ``model_register_from_run``, ``manifest_create``, ``image_create``,
``service_update`` / a canary) and then only reads where that work stands, so a pipeline run
never holds a worker slot while a run trains or an image builds; the task looks again later.

One look at a time per pipeline run: ``advance`` holds the run's row lock (``skip_locked``: a
second delivery finds it taken and leaves). Each step's own writes happen in a savepoint, so a
step that fails leaves nothing half-made, and the service is touched only by the last step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pipelines import checks
from pipelines.models import Pipeline, PipelineRun, PipelineStep
from core.errors import Conflict, PortalError

logger = logging.getLogger(__name__)

WAIT = "wait"
BUSY_PATIENCE_SECONDS = 600  # a deploy waits this long for a service busy with another change
LOG_MAX = 20_000


@dataclass
class Outcome:
    status: str  # "done", "wait", "failed", "skipped"
    message: str = ""


DONE, WAITING = Outcome("done"), Outcome(WAIT)


def _failed(message: str) -> Outcome:
    return Outcome("failed", message)


def _link(obj, label: str | None = None) -> dict:
    return {"id": str(obj.pk), "label": label or getattr(obj, "ref", None) or str(obj)}


def _log(step: PipelineStep, line: str) -> None:
    stamp = timezone.now().strftime("%H:%M:%S")
    step.log = (step.log + f"[{stamp}] {line}\n")[-LOG_MAX:]


def pipeline_start_next(*, pipeline_id) -> str | None:
    """Moves the pipeline's oldest queued run to running unless one is running; returns its id."""
    with transaction.atomic():
        pipeline = Pipeline.objects.select_for_update().filter(pk=pipeline_id).first()
        if pipeline is None or pipeline.runs.filter(status=PipelineRun.Status.RUNNING).exists():
            return None
        run = pipeline.runs.filter(status=PipelineRun.Status.QUEUED).order_by("number").first()
        if run is None:
            return None
        now = timezone.now()
        PipelineRun.objects.filter(pk=run.pk, status=PipelineRun.Status.QUEUED).update(
            status=PipelineRun.Status.RUNNING, started_at=now, heartbeat_at=now)
        return str(run.pk)


def pipeline_run_advance(*, run_id) -> str | None:
    """One look at a running pipeline run: carries out every step that can finish now, in order.
    Returns WAIT (look again later), the final status when it ended, or None (not running, or
    another look holds it)."""
    with transaction.atomic():
        run = (PipelineRun.objects.select_for_update(skip_locked=True, of=("self",))
               .select_related("pipeline__service__image__manifest", "pipeline__project", "pipeline__workspace",
                               "pipeline__created_by", "triggered_by")
               .filter(pk=run_id).first())
        if run is None or run.status != PipelineRun.Status.RUNNING:
            return None
        PipelineRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
        for step in run.steps.order_by("position"):
            if step.status in (PipelineStep.Status.SUCCEEDED, PipelineStep.Status.SKIPPED):
                continue
            if step.status == PipelineStep.Status.FAILED:  # a failure recorded but not finished
                return _finish(run, PipelineRun.Status.FAILED, run.reason or f"Step {step.name} failed.")
            outcome = _do_step(run, step)
            if outcome.status == WAIT:
                return WAIT
            if outcome.status == "failed":
                return _fail(run, step, outcome.message)
            if outcome.status == "stop":  # register only: the rest is skipped on purpose
                run.steps.filter(status=PipelineStep.Status.PENDING).update(status=PipelineStep.Status.SKIPPED)
                return _finish(run, PipelineRun.Status.SUCCEEDED, outcome.message)
        return _finish(run, PipelineRun.Status.SUCCEEDED, "")


def _do_step(run: PipelineRun, step: PipelineStep) -> Outcome:
    now = timezone.now()
    if step.status == PipelineStep.Status.PENDING:
        step.status, step.started_at = PipelineStep.Status.RUNNING, now
    handler = STEPS[step.name]
    try:
        with transaction.atomic():  # a savepoint: a step that raises leaves none of its rows
            outcome = handler(run, step)
    except PortalError as exc:
        outcome = _failed(exc.message)
    except Exception as exc:  # an unexpected error fails the pipeline run, never the worker
        logger.exception("pipeline run %s: step %s raised", run.pk, step.name)
        outcome = _failed(f"{type(exc).__name__}: {exc}"[:1000])
    if outcome.status in ("done", "stop", "skipped"):
        step.status = PipelineStep.Status.SKIPPED if outcome.status == "skipped" else PipelineStep.Status.SUCCEEDED
        step.ended_at = timezone.now()
        if outcome.message:
            _log(step, outcome.message)
    elif outcome.status == "failed":
        step.status, step.ended_at = PipelineStep.Status.FAILED, timezone.now()
        _log(step, outcome.message)
    step.save(update_fields=["status", "started_at", "ended_at", "log", "links", "state"])
    return outcome


def _fail(run: PipelineRun, step: PipelineStep, message: str) -> str:
    run.steps.filter(status=PipelineStep.Status.PENDING).update(status=PipelineStep.Status.SKIPPED)
    served = run.served_model.ref if run.served_model_id else None
    keeps = ""
    if run.pipeline.mode == Pipeline.Mode.DEPLOY and step.name != PipelineStep.Name.DEPLOY:
        keeps = f" The service '{run.pipeline.service.name}' is untouched" + (f" and keeps serving {served}." if served else ".")
    return _finish(run, PipelineRun.Status.FAILED, f"Step {step.name} failed: {message}{keeps}")


def _finish(run: PipelineRun, status: str, reason: str) -> str:
    from pipelines.tasks import start_pipeline

    PipelineRun.objects.filter(pk=run.pk, status=PipelineRun.Status.RUNNING).update(
        status=status, reason=reason[:4000], ended_at=timezone.now())
    pid = str(run.pipeline_id)
    transaction.on_commit(lambda: start_pipeline.delay(pid))
    return status


def _actor(run: PipelineRun):
    user = run.triggered_by or run.pipeline.created_by
    if user is None:
        raise PortalError("The pipeline has no user to act as (its creator's account is gone): trigger it by hand.")
    return user


# --- the steps ---------------------------------------------------------------------------------

def _step_run(run: PipelineRun, step: PipelineStep) -> Outcome:
    from runs import services as runs_services
    from runs.models import Run

    pipeline = run.pipeline
    if not step.state.get("run"):
        served = _served_model(run)
        if served is not None:
            PipelineRun.objects.filter(pk=run.pk).update(served_model=served)
            run.served_model = served
        submitted = runs_services.run_submit(project=pipeline.project, script=pipeline.script, args=pipeline.args,
                                             target=pipeline.target, user=_actor(run))
        step.state = {"run": str(submitted.pk)}
        step.links = {"run": _link(submitted, f"{pipeline.project.name} #{submitted.number}")}
        PipelineRun.objects.filter(pk=run.pk).update(run=submitted)
        run.run = submitted
        _log(step, f"Submitted run {pipeline.project.name} #{submitted.number} ({pipeline.script} on {submitted.target}).")
        return WAITING
    current = Run.objects.select_related("project").filter(pk=step.state["run"]).first()
    if current is None:
        return _failed("Its run was deleted before it finished.")
    if current.status in Run.ACTIVE:
        return WAITING
    if current.status != Run.Status.COMPLETED:
        why = current.status_reason or (f"exit code {current.exit_code}" if current.exit_code is not None else "")
        return _failed(f"Run {current} {current.get_status_display().lower()}" + (f": {why}" if why else "") + ".")
    return Outcome("done", f"Run {current} completed in {current.duration_s or 0:.1f} s.")


def _served_model(run: PipelineRun):
    service = run.pipeline.service
    models = list(service.image.manifest.model_versions.order_by("manifest_models__position"))
    wanted = run.pipeline.model_name
    return next((m for m in models if not wanted or m.name == wanted), None)


def _metric(run, name: str) -> float | None:
    from runs.models import RunMetricSummary

    row = RunMetricSummary.objects.filter(run=run, name=name).first()
    return None if row is None else row.value


def _logged_names(run) -> str:
    from runs.models import RunMetricSummary

    names = sorted(RunMetricSummary.objects.filter(run=run).values_list("name", flat=True)[:30])
    return ", ".join(repr(n) for n in names) or "no metrics at all"


def _step_gate(run: PipelineRun, step: PipelineStep) -> Outcome:
    gate = checks.parse_gate(run.pipeline.gate)
    if gate is None:
        return Outcome("skipped", "No gate: every completed run goes on.")
    new = _metric(run.run, gate.metric)
    if new is None:
        return _failed(f"Run {run.run} logged no metric {gate.metric!r} (it logged {_logged_names(run.run)}), so the gate "
                       f"'{run.pipeline.gate}' cannot pass: log it from the script, or change the gate.")
    served_value = None
    if gate.relative:
        served = run.served_model
        if served is None or served.run_id is None:
            what = served.ref if served is not None else "the served model"
            return _failed(f"The model in service ({what}) was not made by a run, so there is no served value of "
                           f"{gate.metric!r} to compare with: use a fixed threshold, like '{gate.metric} >= 0.8'.")
        served_value = _metric(served.run, gate.metric)
        if served_value is None:
            return _failed(f"The run that made the served model {served.ref} ({served.run}) logged no metric "
                           f"{gate.metric!r}: use a fixed threshold, or a metric both runs log.")
    step.links = {"metric": {"name": gate.metric, "new": new, "served": served_value, "limit": gate.limit(served_value)}}
    verdict = f"{gate.metric} = {new:g}, gate {gate.describe(served_value)}"
    if not gate.passes(new, served_value):
        return _failed(f"Gate not passed: {verdict}.")
    return Outcome("done", f"Gate passed: {verdict}.")


def _step_register(run: PipelineRun, step: PipelineStep) -> Outcome:
    from registry import services as registry_services

    pipeline = run.pipeline
    served = run.served_model
    name = pipeline.model_name or (served.name if served is not None else "")
    if not name:
        return _failed(f"Service '{pipeline.service.name}' serves no model to version; set the pipeline's model name.")
    model = registry_services.model_register_from_run(
        run=run.run, path=pipeline.output_path, name=name, user=_actor(run),
        description=f"Retrained by pipeline {pipeline.name} (run #{run.number}).",
        tags={"pipeline": pipeline.name, "pipeline_run": str(run.number)})
    PipelineRun.objects.filter(pk=run.pk).update(model=model)
    run.model = model
    step.links = {"model": _link(model)}
    if pipeline.mode == Pipeline.Mode.REGISTER_ONLY:
        return Outcome("stop", f"Registered {model.ref} from {pipeline.output_path}; register only: the service is left as it is.")
    return Outcome("done", f"Registered {model.ref} from {run.run}'s {pipeline.output_path} (sha256 {model.sha256[:12]}).")


def _step_manifest(run: PipelineRun, step: PipelineStep) -> Outcome:
    from core.storage import read_file
    from registry import services as registry_services
    from registry.models import Manifest
    from runs.models import ProjectFile

    pipeline = run.pipeline
    current = pipeline.service.image.manifest
    models = [run.model if m.name == run.model.name else m
              for m in current.model_versions.order_by("manifest_models__position")]
    requirements = (registry_services.manifest_file(current, Manifest.REQUIREMENTS)
                    if Manifest.REQUIREMENTS in current.files else None)
    if pipeline.requirements_path:
        found = ProjectFile.objects.filter(project=pipeline.project, path=pipeline.requirements_path).first()
        if found is None:
            return _failed(f"Project '{pipeline.project.name}' has no file {pipeline.requirements_path!r} any more.")
        requirements = read_file(found.storage_name)
    manifest = registry_services.manifest_create(
        workspace=pipeline.workspace, name=current.name, models=models,
        score=registry_services.manifest_file(current, Manifest.SCORE),
        schema=registry_services.manifest_file(current, Manifest.SCHEMA), requirements=requirements,
        user=_actor(run), runtime=current.runtime, project=current.project)
    PipelineRun.objects.filter(pk=run.pk).update(manifest=manifest)
    run.manifest = manifest
    step.links = {"manifest": _link(manifest)}
    return Outcome("done", f"Created manifest {manifest.ref}: {current.ref}'s files with {run.model.ref}.")


def _step_image(run: PipelineRun, step: PipelineStep) -> Outcome:
    from registry import services as registry_services
    from registry.models import Image

    if not step.state.get("image"):
        image = registry_services.image_create(manifest=run.manifest, user=_actor(run),
                                               name=run.pipeline.service.image.name)
        step.state = {"image": str(image.pk)}
        step.links = {"image": _link(image)}
        PipelineRun.objects.filter(pk=run.pk).update(image=image)
        _log(step, f"Building image {image.ref} ({image.tag}).")
        return WAITING
    image = Image.objects.filter(pk=step.state["image"]).first()
    if image is None:
        return _failed("Its image was deleted before it was built.")
    if image.status == Image.Status.FAILED:
        return _failed(f"Image {image.ref} failed to build: {image.error or 'see its build log'}.")
    if image.status != Image.Status.SUCCEEDED:
        return WAITING
    return Outcome("done", f"Built image {image.ref} in {image.build_seconds or 0:.1f} s.")


def _step_deploy(run: PipelineRun, step: PipelineStep) -> Outcome:
    from deployments import services as deployments_services
    from deployments.models import Service
    from gateway import services as gateway_services
    from registry import aliases
    from registry.models import Image

    pipeline = run.pipeline
    image = Image.objects.get(pk=step.state.get("image") or run.image_id) if run.image_id else None
    if image is None:
        return _failed("There is no image to deploy.")
    service = Service.objects.select_related("image", "workspace", "environment").get(pk=pipeline.service_id)
    if not step.state.get("asked"):
        first = step.state.get("first_try") or timezone.now().isoformat()
        try:
            if pipeline.rollout == Pipeline.Rollout.CANARY:
                gateway_services.service_rollout_start(service=service, image=image, user=_actor(run),
                                                       canary=pipeline.canary_weight,
                                                       bake_seconds=pipeline.canary_bake_seconds)
            else:
                deployments_services.service_update(service=service, image=image, user=_actor(run))
        except Conflict as exc:
            waited = (timezone.now() - datetime.fromisoformat(first)).total_seconds()
            if waited > BUSY_PATIENCE_SECONDS:
                return _failed(f"{exc.message} (waited {waited:.0f} s).")
            if not step.state.get("first_try"):
                _log(step, f"Waiting: {exc.message}")
            step.state = {"first_try": first}
            return WAITING
        step.state = {"asked": True, "image": str(image.pk), "from": service.image.ref}
        step.links = {"service": _link(service, service.name)}
        _log(step, f"Asked service '{service.name}' to move from image {service.image.ref} to {image.ref} "
                   f"({'canary ' + str(pipeline.canary_weight) + '%' if pipeline.rollout == 'canary' else 'rolling update'}).")
        return WAITING
    rollout = service.rollout or {}
    if rollout:
        if (rollout.get("image") == str(image.pk) and rollout.get("status") == "running" and rollout.get("baked")
                and not step.state.get("promoting")):
            gateway_services.service_rollout_finish(service=service, user=_actor(run), action="promote")
            step.state = {**step.state, "promoting": True}
            _log(step, f"The canary of {image.ref} passed its bake period: promoting it.")
        return WAITING
    if service.status == Service.Status.UPDATING:
        return WAITING
    if service.image_id == image.pk:
        revision = service.revisions.filter(image=image).order_by("-number").first()
        number = revision.number if revision else None
        PipelineRun.objects.filter(pk=run.pk).update(revision=number)
        step.links = {**step.links, "revision": {"id": str(number), "label": f"revision {number}"}}
        message = (f"Service '{service.name}' serves image {image.ref} (revision {number}) at the same URL and with the "
                   "same keys.")
        if run.model_id and aliases.is_production(service.environment):
            aliases.model_alias_set(model=run.model, alias=aliases.PRODUCTION, user=_actor(run), check_role=False,
                                    reason=f"pipeline {pipeline.name} run #{run.number} deployed it to service "
                                           f"'{service.name}' (revision {number}) in environment '{service.environment.name}'")
            message += f" {run.model.ref} is now '{aliases.PRODUCTION}'."
        return Outcome("done", message)
    why = service.last_update_error or "it went back to its previous image"
    return _failed(f"The update of service '{service.name}' to {image.ref} did not happen: {why}")


STEPS = {
    PipelineStep.Name.RUN: _step_run,
    PipelineStep.Name.GATE: _step_gate,
    PipelineStep.Name.REGISTER: _step_register,
    PipelineStep.Name.MANIFEST: _step_manifest,
    PipelineStep.Name.IMAGE: _step_image,
    PipelineStep.Name.DEPLOY: _step_deploy,
}


def pipelines_sweep() -> dict:
    """Re-sends the look of running pipeline runs nobody advanced lately (a lost message, a worker
    that died) and starts queued ones whose pipeline is idle. Returns the counts."""
    from pipelines.tasks import advance_pipeline_run, start_pipeline

    stale = timezone.now() - timedelta(seconds=max(30, 10 * settings.MLPORTAL_PIPELINE_POLL_SECONDS))
    resent = [str(i) for i in PipelineRun.objects.filter(status=PipelineRun.Status.RUNNING, heartbeat_at__lt=stale)
              .values_list("pk", flat=True)[:200]]
    for run_id in resent:
        advance_pipeline_run.delay(run_id)
    idle = set(PipelineRun.objects.filter(status=PipelineRun.Status.QUEUED).values_list("pipeline_id", flat=True)[:200])
    for pipeline_id in idle:
        start_pipeline.delay(str(pipeline_id))
    return {"resent": len(resent), "started": len(idle)}
