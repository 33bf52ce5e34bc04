"""The pipelines API's request side: create with every field checked (nothing half-created),
outsiders 404, roles, and two triggers at once giving one pipeline run."""
from __future__ import annotations

import pytest

from pipelines.models import Pipeline, PipelineRun

pytestmark = pytest.mark.django_db


def body(project, service, **extra):
    return {"name": "churn-retrain", "project": project.name, "script": "train.py", "service": service.name, **extra}


def test_it_creates_a_pipeline_and_lists_it(owner_api, project, recorded_service):
    service = recorded_service()
    created = owner_api.post("/api/v1/pipelines/", body(project, service, gate="DTree Accuracy >= served - 0.01"),
                             format="json")
    assert created.status_code == 201, created.json()
    data = created.json()
    assert (data["service"], data["project"], data["output_path"], data["mode"], data["when_busy"]) == (
        "churnpred", "churn_prediction", "outputs/model.pkl", "deploy", "queue")
    listed = owner_api.get("/api/v1/pipelines/?search=churn").json()
    assert [p["name"] for p in listed["results"]] == ["churn-retrain"]
    assert owner_api.get("/api/v1/pipelines/churn-retrain/").json()["gate"] == "DTree Accuracy >= served - 0.01"


@pytest.mark.parametrize("extra, field, words", [
    ({"gate": "DTree Accuracy >= best"}, "gate", "neither a number nor 'served'"),
    ({"script": "nope.py"}, "script", "no Python file 'nope.py'"),
    ({"output_path": "../model.pkl"}, "output_path", "not a file under outputs/"),
    ({"mode": "yolo"}, "mode", "use deploy or register_only"),
    ({"when_busy": "race"}, "when_busy", "use queue or skip"),
    ({"model_name": "other.pkl"}, "model_name", "not among them"),
    ({"name": "Bad Name"}, "name", "is not allowed"),
])
def test_bad_input_is_a_400_naming_the_field_and_creates_nothing(owner_api, project, recorded_service, extra, field, words):
    service = recorded_service()
    answer = owner_api.post("/api/v1/pipelines/", body(project, service, **extra), format="json")
    assert answer.status_code == 400, answer.json()
    error = answer.json()["error"]
    assert field in error["fields"] and words in error["message"], error
    assert not Pipeline.objects.exists()


def test_a_service_of_another_workspace_is_a_404_and_creates_nothing(owner_api, project, recorded_service, outsider):
    from workspaces.models import Workspace

    theirs = recorded_service("theirs", ws=Workspace.objects.get(name="elsewhere"), user=outsider)
    answer = owner_api.post("/api/v1/pipelines/", body(project, theirs), format="json")
    assert answer.status_code == 404 and "service" in answer.json()["error"]["fields"]
    assert not Pipeline.objects.exists()


def test_outsiders_get_404_and_readers_cannot_trigger(owner_api, outsider_api, reader_api, project, recorded_service):
    created = owner_api.post("/api/v1/pipelines/", body(project, recorded_service()), format="json").json()
    run = owner_api.post("/api/v1/pipelines/churn-retrain/run/", format="json")
    assert run.status_code == 202 and run.json()["status"] == "queued"
    for path in (f"/api/v1/pipelines/{created['id']}/", "/api/v1/pipelines/churn-retrain/",
                 f"/api/v1/pipeline-runs/{run.json()['id']}/"):
        assert outsider_api.get(path).status_code == 404
    assert outsider_api.post(f"/api/v1/pipelines/{created['id']}/run/").status_code == 404
    assert outsider_api.get("/api/v1/pipelines/").json()["count"] == 0
    assert outsider_api.get("/api/v1/pipeline-runs/").json()["count"] == 0
    assert reader_api.post(f"/api/v1/pipelines/{created['id']}/run/").status_code == 403
    assert reader_api.get(f"/api/v1/pipeline-runs/?pipeline={created['id']}").json()["count"] == 1


def test_a_trigger_while_busy_is_queued_once_then_coalesced(owner_api, project, recorded_service):
    owner_api.post("/api/v1/pipelines/", body(project, recorded_service()), format="json")
    first = owner_api.post("/api/v1/pipelines/churn-retrain/run/").json()
    PipelineRun.objects.filter(pk=first["id"]).update(status="running")  # as the worker's start would
    second = owner_api.post("/api/v1/pipelines/churn-retrain/run/").json()
    third = owner_api.post("/api/v1/pipelines/churn-retrain/run/").json()
    assert (first["number"], second["status"], third["status"]) == (1, "queued", "skipped")
    assert "#2 is queued already" in third["reason"]
    assert [s["name"] for s in second["steps"]] == ["run", "gate", "register", "manifest", "image", "deploy"]


def test_a_pipeline_that_skips_when_busy_records_the_skip(owner_api, project, recorded_service):
    owner_api.post("/api/v1/pipelines/", body(project, recorded_service(), when_busy="skip"), format="json")
    first = owner_api.post("/api/v1/pipelines/churn-retrain/run/").json()
    PipelineRun.objects.filter(pk=first["id"]).update(status="running")
    second = owner_api.post("/api/v1/pipelines/churn-retrain/run/").json()
    assert second["status"] == "skipped" and "#1 was going" in second["reason"]
    assert PipelineRun.objects.filter(status__in=["queued", "running"]).count() == 1


def test_the_database_refuses_two_running_runs_of_one_pipeline(owner_api, project, recorded_service):
    from django.db import IntegrityError, transaction

    owner_api.post("/api/v1/pipelines/", body(project, recorded_service()), format="json")
    owner_api.post("/api/v1/pipelines/churn-retrain/run/")
    owner_api.post("/api/v1/pipelines/churn-retrain/run/")
    PipelineRun.objects.filter(number=1).update(status="running")
    with pytest.raises(IntegrityError), transaction.atomic():
        PipelineRun.objects.filter(number=2).update(status="running")
