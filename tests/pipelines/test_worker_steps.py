"""The worker's step logic without an engine: the pipeline's run is completed here through the
runs worker-side services (as the runs worker records it), and each look is one
``pipeline_run_advance``. A step that fails stops the chain, names why and leaves the service."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import services, worker
from pipelines.models import PipelineRun
from runs import metrics as runs_metrics
from runs import worker as runs_worker
from runs.models import Run
from tests.pipelines.conftest import make_tar

pytestmark = pytest.mark.django_db


def complete(run_id, *, metrics=None, outputs=None, status=Run.Status.COMPLETED, reason=""):
    """Records the end of the pipeline's run as the runs worker would."""
    run = Run.objects.get(pk=run_id)
    assert runs_worker.run_claim(run_id=run.id, worker="tests") is not None
    runs_worker.run_mark_running(run_id=run.id, image="mlportal-env:test")
    runs_metrics.run_record_metrics(run_id=run.id, workspace_id=run.workspace_id, points=[
        {"name": k, "value": v, "step": None, "time": None} for k, v in (metrics or {}).items()])
    if outputs:
        runs_worker.run_store_outputs(run=run, tar_path=Path(make_tar(outputs)))
    runs_worker.run_finish(run_id=run.id, status=status, reason=reason, exit_code=0 if status == "completed" else 3)


def start(pipeline, user) -> PipelineRun:
    prun = services.pipeline_trigger(pipeline=pipeline, user=user)
    assert worker.pipeline_start_next(pipeline_id=pipeline.pk) == str(prun.pk)
    assert worker.pipeline_run_advance(run_id=prun.pk) == worker.WAIT  # the run is submitted
    prun.refresh_from_db()
    assert prun.run is not None and prun.run.status == Run.Status.QUEUED
    return prun


def steps(prun) -> dict:
    return {s.name: s for s in prun.steps.all()}


def test_a_gate_on_a_metric_the_script_never_logged_fails_the_gate_not_the_portal(owner, workspace, project, recorded_service):
    service = recorded_service()
    pipeline = services.pipeline_create(workspace=workspace, user=owner, name="p", project=project, script="train.py",
                                        service=service, gate="DTree Accuracy >= 0.8")
    prun = start(pipeline, owner)
    complete(prun.run_id, metrics={"Naive Bayes Accuracy": 0.7}, outputs={"outputs/model.pkl": b"x"})
    assert worker.pipeline_run_advance(run_id=prun.pk) == "failed"
    prun.refresh_from_db()
    assert "logged no metric 'DTree Accuracy'" in prun.reason and "'Naive Bayes Accuracy'" in prun.reason
    assert "keeps serving model.pkl:1" in prun.reason
    by_name = steps(prun)
    assert (by_name["run"].status, by_name["gate"].status, by_name["register"].status) == ("succeeded", "failed", "skipped")
    assert "logged no metric" in by_name["gate"].log
    service.refresh_from_db()
    assert service.image.version == 1 and service.status == "healthy"


def test_an_output_path_the_run_did_not_write_fails_the_register_step_listing_its_outputs(owner, workspace, project,
                                                                                          recorded_service):
    from registry.models import Model

    pipeline = services.pipeline_create(workspace=workspace, user=owner, name="p", project=project, script="train.py",
                                        service=recorded_service(), output_path="outputs/model.pkl")
    prun = start(pipeline, owner)
    complete(prun.run_id, outputs={"outputs/tree.pkl": b"x"})
    assert worker.pipeline_run_advance(run_id=prun.pk) == "failed"
    prun.refresh_from_db()
    assert "has no output 'outputs/model.pkl'; its outputs are outputs/tree.pkl" in prun.reason
    assert steps(prun)["gate"].status == "skipped" and Model.objects.count() == 1


def test_a_failed_run_stops_the_chain_with_its_reason(owner, workspace, project, recorded_service):
    pipeline = services.pipeline_create(workspace=workspace, user=owner, name="p", project=project, script="train.py",
                                        service=recorded_service())
    prun = start(pipeline, owner)
    complete(prun.run_id, status=Run.Status.FAILED, reason="exit code 3")
    assert worker.pipeline_run_advance(run_id=prun.pk) == "failed"
    prun.refresh_from_db()
    assert f"Run {prun.run} failed: exit code 3" in prun.reason
    assert [s.status for s in prun.steps.order_by("position")] == ["failed"] + ["skipped"] * 5


def test_a_relative_gate_compares_with_the_run_that_made_the_served_model(owner, workspace, project, recorded_service,
                                                                          finished_run):
    served_run = finished_run(project, owner, metrics={"acc": 0.9})
    pipeline = services.pipeline_create(workspace=workspace, user=owner, name="p", project=project, script="train.py",
                                        service=recorded_service(run=served_run), gate="acc >= served - 0.01")
    prun = start(pipeline, owner)
    complete(prun.run_id, metrics={"acc": 0.85}, outputs={"outputs/model.pkl": b"x"})
    assert worker.pipeline_run_advance(run_id=prun.pk) == "failed"
    prun.refresh_from_db()
    assert "Gate not passed: acc = 0.85, gate acc >= served - 0.01 = 0.89" in prun.reason
    assert steps(prun)["gate"].links["metric"] == {"name": "acc", "new": 0.85, "served": 0.9, "limit": pytest.approx(0.89)}


def test_register_only_registers_the_next_version_and_leaves_the_service(owner, workspace, project, recorded_service,
                                                                        finished_run):
    import pickle

    served_run = finished_run(project, owner, metrics={"acc": 0.9})
    service = recorded_service(run=served_run)
    pipeline = services.pipeline_create(workspace=workspace, user=owner, name="p", project=project, script="train.py",
                                        service=service, gate="acc >= served", mode="register_only")
    prun = start(pipeline, owner)
    complete(prun.run_id, metrics={"acc": 0.95}, outputs={"outputs/model.pkl": pickle.dumps({"w": [1, 2]})})
    assert worker.pipeline_run_advance(run_id=prun.pk) == "succeeded"
    prun.refresh_from_db()
    assert prun.model.ref == "model.pkl:2" and prun.model.run_id == prun.run_id
    assert [s.status for s in prun.steps.order_by("position")] == ["succeeded"] * 3 + ["skipped"] * 3
    service.refresh_from_db()
    assert service.image.version == 1
    # Queued behind nothing: the next trigger starts at once.
    again = services.pipeline_trigger(pipeline=pipeline, user=owner)
    assert worker.pipeline_start_next(pipeline_id=pipeline.pk) == str(again.pk)


def _at_deploy(owner, workspace, project, service, **fields):
    """A running pipeline run whose last step is next, with a second built image of the service."""
    from registry.models import Image

    pipeline = services.pipeline_create(workspace=workspace, user=owner, name="p", project=project, script="train.py",
                                        service=service, **fields)
    new = Image.objects.create(workspace=workspace, name=service.image.name, version=2, manifest=service.image.manifest,
                               tag="mlportal/x-churnpred:2", status=Image.Status.SUCCEEDED, created_by=owner)
    prun = services.pipeline_trigger(pipeline=pipeline, user=owner)
    PipelineRun.objects.filter(pk=prun.pk).update(status="running", image=new)
    prun.refresh_from_db()
    return prun, prun.steps.get(name="deploy"), new


def test_a_canary_deploy_is_promoted_once_baked(owner, workspace, project, recorded_service):
    from deployments.models import Service, ServiceRevision

    service = recorded_service()
    prun, step, new = _at_deploy(owner, workspace, project, service, rollout="canary", canary_weight=20,
                                 canary_bake_seconds=30)
    assert worker._step_deploy(prun, step) == worker.WAITING
    service.refresh_from_db()
    assert (service.rollout["mode"], service.rollout["weight"], service.rollout["image"]) == ("canary", 20, str(new.pk))
    # The gateway's worker starts it and, after the bake period, marks it baked: the pipeline promotes.
    Service.objects.filter(pk=service.pk).update(rollout={**service.rollout, "status": "running", "revision": 2, "baked": True})
    assert worker._step_deploy(prun, step) == worker.WAITING
    service.refresh_from_db()
    assert service.rollout["status"] == "promoting"
    # Promoted: the new image is live.
    ServiceRevision.objects.create(service=service, number=2, image=new, image_ref=new.ref, reason="canary")
    Service.objects.filter(pk=service.pk).update(rollout={}, image=new)
    outcome = worker._step_deploy(prun, step)
    assert outcome.status == "done" and "revision 2" in outcome.message


def test_a_canary_rolled_back_fails_the_deploy_with_the_reason(owner, workspace, project, recorded_service):
    from deployments.models import Service

    service = recorded_service()
    prun, step, _ = _at_deploy(owner, workspace, project, service, rollout="canary")
    assert worker._step_deploy(prun, step) == worker.WAITING
    Service.objects.filter(pk=service.pk).update(
        rollout={}, last_update_error="Canary revision 2 rolled back automatically: error rate 40% against 0%.")
    outcome = worker._step_deploy(prun, step)
    assert outcome.status == "failed" and "rolled back automatically: error rate 40%" in outcome.message


def test_a_busy_service_makes_the_deploy_wait_not_fail(owner, workspace, project, recorded_service):
    from deployments.models import Service

    service = recorded_service()
    prun, step, new = _at_deploy(owner, workspace, project, service)
    Service.objects.filter(pk=service.pk).update(status="updating")
    assert worker._step_deploy(prun, step) == worker.WAITING
    assert "Waiting: Service 'churnpred' is updating" in step.log and not step.state.get("asked")
    Service.objects.filter(pk=service.pk).update(status="healthy")
    assert worker._step_deploy(prun, step) == worker.WAITING and step.state["asked"]
    service.refresh_from_db()
    assert service.status == "updating" and service.pending["image"] == str(new.pk)
