"""Triggers besides "by hand", their request side: a schedule (a django-celery-beat PeriodicTask
kept in step; a cron line that does not parse is a 400 naming it), the incoming webhook (signed
with the pipeline's secret, shown once) and the new-data trigger's choice of files."""
from __future__ import annotations

import hashlib
import hmac

import pytest
from django_celery_beat.models import PeriodicTask

from pipelines.models import Pipeline, PipelineRun

pytestmark = pytest.mark.django_db


def body(project, service, **extra):
    return {"name": "churn-retrain", "project": project.name, "script": "train.py", "service": service.name, **extra}


@pytest.mark.parametrize("schedule, words", [
    ("61 * * * *", "its minute field '61' is not valid"),
    ("0 3 * *", "does not parse"),
    ("0 3 * * funday", "its day of week field 'funday' is not valid"),
    ("every 2 seconds", "from 5 seconds to a year"),
])
def test_a_schedule_that_does_not_parse_is_a_400_naming_it_and_nothing_is_created(owner_api, project, recorded_service,
                                                                                  schedule, words):
    answer = owner_api.post("/api/v1/pipelines/", body(project, recorded_service(), schedule=schedule), format="json")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "invalid_schedule" and "schedule" in error["fields"] and words in error["message"], error
    assert not Pipeline.objects.exists() and not PeriodicTask.objects.filter(task="pipelines.tasks.scheduled_trigger").exists()


def test_the_schedule_is_a_periodic_task_kept_in_step(owner_api, project, recorded_service):
    created = owner_api.post("/api/v1/pipelines/", body(project, recorded_service(), schedule="0 3 * * mon"), format="json")
    assert created.status_code == 201, created.json()
    task = PeriodicTask.objects.get(task="pipelines.tasks.scheduled_trigger")
    assert str(task.crontab).startswith("0 3 * * mon") and task.args == f'["{created.json()["id"]}"]' and task.enabled
    changed = owner_api.patch("/api/v1/pipelines/churn-retrain/", {"schedule": "every 10 minutes", "enabled": False},
                              format="json")
    assert changed.status_code == 200 and changed.json()["schedule"] == "every 10 minutes"
    task.refresh_from_db()
    assert (task.interval.every, task.interval.period, task.crontab, task.enabled) == (600, "seconds", None, False)
    assert owner_api.patch("/api/v1/pipelines/churn-retrain/", {"schedule": "61 * * * *"}, format="json").status_code == 400
    task.refresh_from_db()
    assert task.interval.every == 600  # a refused change leaves the schedule as it was
    assert owner_api.patch("/api/v1/pipelines/churn-retrain/", {"schedule": ""}, format="json").status_code == 200
    assert not PeriodicTask.objects.filter(pk=task.pk).exists()


def test_deleting_a_pipeline_removes_its_periodic_task(owner_api, project, recorded_service):
    owner_api.post("/api/v1/pipelines/", body(project, recorded_service(), schedule="every 1 hour"), format="json")
    assert owner_api.delete("/api/v1/pipelines/churn-retrain/").status_code == 204
    assert not PeriodicTask.objects.filter(task="pipelines.tasks.scheduled_trigger").exists()


def sign(secret: str, data: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def test_the_incoming_webhook_needs_the_pipelines_signature(client, owner_api, outsider_api, project, recorded_service):
    created = owner_api.post("/api/v1/pipelines/", body(project, recorded_service(), webhook=True), format="json").json()
    secret, url = created["webhook_secret"], created["webhook_url"]
    assert url.endswith(f"/api/v1/pipelines/{created['id']}/hook/")
    assert "webhook_secret" not in owner_api.get("/api/v1/pipelines/churn-retrain/").json()  # shown once
    payload = b'{"event": "new-data", "table": "customers"}'
    path = f"/api/v1/pipelines/{created['id']}/hook/"
    unsigned = client.post(path, payload, content_type="application/json")
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "signature_missing"
    wrong = client.post(path, payload, content_type="application/json", HTTP_X_MLPORTAL_SIGNATURE_256=sign("guess", payload))
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "bad_signature"
    tampered = client.post(path, payload + b" ", content_type="application/json",
                           HTTP_X_MLPORTAL_SIGNATURE_256=sign(secret, payload))
    assert tampered.status_code == 403
    assert not PipelineRun.objects.exists()
    good = client.post(path, payload, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=sign(secret, payload),
                       HTTP_USER_AGENT="GitHub-Hookshot/1")
    assert good.status_code == 202, good.json()
    assert (good.json()["trigger"], good.json()["status"], good.json()["trigger_detail"]) == ("webhook", "queued", "GitHub-Hookshot/1")
    # A new secret: the old one stops working; an outsider cannot make one.
    assert outsider_api.post(f"/api/v1/pipelines/{created['id']}/webhook-secret/").status_code == 404
    rotated = owner_api.post("/api/v1/pipelines/churn-retrain/webhook-secret/").json()["webhook_secret"]
    assert rotated != secret
    assert client.post(path, payload, content_type="application/json",
                       HTTP_X_MLPORTAL_SIGNATURE_256=sign(secret, payload)).status_code == 403
    assert owner_api.post("/api/v1/pipelines/churn-retrain/webhook-secret/", {"enabled": False}, format="json").status_code == 200
    assert client.post(path, payload, content_type="application/json",
                       HTTP_X_MLPORTAL_SIGNATURE_256=sign(rotated, payload)).status_code == 404


def test_a_pipeline_without_a_webhook_answers_404_to_the_hook(client, owner_api, project, recorded_service):
    created = owner_api.post("/api/v1/pipelines/", body(project, recorded_service()), format="json").json()
    assert created["webhook"] is False and created["webhook_url"] is None
    answer = client.post(f"/api/v1/pipelines/{created['id']}/hook/", b"{}", content_type="application/json",
                         HTTP_X_MLPORTAL_SIGNATURE_256=sign("", b"{}"))
    assert answer.status_code == 404


def test_only_new_or_changed_files_under_data_start_the_pipelines_that_watch(owner, workspace, project, recorded_service,
                                                                              django_capture_on_commit_callbacks, monkeypatch):
    from pipelines import services, tasks
    from runs import services as runs_services

    sent = []
    monkeypatch.setattr(tasks.data_trigger, "delay", lambda project_id, paths: sent.append((project_id, paths)))
    services.pipeline_create(workspace=workspace, user=owner, name="p", project=project, script="train.py",
                             service=recorded_service(), trigger_on_data=True)
    with django_capture_on_commit_callbacks(execute=True):
        runs_services.project_file_put(project=project, path="data/customers.csv", content=b"a,b\n1,2\n", user=owner)
    with django_capture_on_commit_callbacks(execute=True):
        runs_services.project_file_put(project=project, path="data/customers.csv", content=b"a,b\n1,2\n", user=owner)
        runs_services.project_file_put(project=project, path="notes.txt", content=b"not data", user=owner)
    with django_capture_on_commit_callbacks(execute=True):
        runs_services.project_file_put(project=project, path="data/customers.csv", content=b"a,b\n3,4\n", user=owner)
    assert sent == [(str(project.pk), ["data/customers.csv"])] * 2  # new, unchanged (nothing), changed
    # The task itself: one pipeline run, with the data file named.
    (run_id,) = tasks.data_trigger.run(str(project.pk), ["data/customers.csv"])
    run = PipelineRun.objects.get(pk=run_id)
    assert (run.trigger, run.trigger_detail, run.triggered_by) == ("data", "data/customers.csv", None)
    assert tasks.data_trigger.run(str(project.pk), ["data/more.csv"]) == [run_id]  # absorbed by the queued run
    run.refresh_from_db()
    assert run.trigger_detail == "data/customers.csv; also data: data/more.csv"
