"""The automatic triggers with the real parts: a real Celery beat (django-celery-beat's database
scheduler) fires a pipeline's short interval, a data file uploaded through the API starts the
pipelines watching the project, and a signed webhook through the live server starts one; the
worker runs each (a training script that fails fast, so no service is touched)."""
from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
import sys

import pytest
import requests

from pipelines.models import PipelineRun
from tests.conftest import REPO, worker_env
from tests.helpers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.integration]


@pytest.fixture
def beat(celery_worker, tmp_path):
    """A real beat process reading its schedule from the test database."""
    from django.db import connection

    log_path = tmp_path / "beat.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "mlportal", "beat", "--loglevel", "INFO", "--max-interval", "1",
         "--pidfile", ""], cwd=REPO, env=worker_env(dict(connection.settings_dict)), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log_path
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def runs_by(trigger: str) -> list[PipelineRun]:
    return list(PipelineRun.objects.filter(trigger=trigger).order_by("number"))


def test_data_webhook_and_schedule_triggers_start_pipeline_runs(celery_worker, beat, live_server, owner, workspace,
                                                                 owner_api, recorded_service, churn_env_image):
    from runs import services as runs_services

    project = runs_services.project_create(workspace=workspace, name="churn_prediction", user=owner, template="churn")
    runs_services.project_file_put(project=project, path="fail.py", content=b"import sys\nsys.exit(3)\n", user=owner)
    created = owner_api.post("/api/v1/pipelines/", {
        "name": "retrain", "project": project.name, "script": "fail.py", "service": recorded_service().name,
        "trigger_on_data": True, "webhook": True, "when_busy": "skip"}, format="json")
    assert created.status_code == 201, created.json()
    pipeline = created.json()

    # New data through the API (what the page and `mlportal project upload` call).
    upload = owner_api.post(f"/api/v1/projects/{project.pk}/upload/", {
        "file": _file("CATelcoCustomerChurnTrainingSample.csv", b"churn,age\n0,30\n1,40\n"),
        "path": "data/CATelcoCustomerChurnTrainingSample.csv"}, format="multipart")
    assert upload.status_code in (200, 201), upload.content
    data_run = wait_until(lambda: runs_by("data"), timeout=60, message="a data-triggered pipeline run")[0]
    assert "data/CATelcoCustomerChurnTrainingSample.csv" in data_run.trigger_detail
    finished = wait_until(lambda: PipelineRun.objects.filter(pk=data_run.pk, status="failed").first(), timeout=180,
                          message="the data-triggered run to end")
    assert "Step run failed" in finished.reason and "untouched" in finished.reason

    # A signed webhook through the live server.
    payload = b'{"reason": "nightly export done"}'
    signature = "sha256=" + hmac.new(pipeline["webhook_secret"].encode(), payload, hashlib.sha256).hexdigest()
    answer = requests.post(f"{live_server.url}/api/v1/pipelines/{pipeline['id']}/hook/", data=payload, timeout=30,
                           headers={"Content-Type": "application/json", "X-MLPortal-Signature-256": signature})
    assert answer.status_code == 202, answer.text
    assert answer.json()["trigger"] == "webhook"
    wait_until(lambda: PipelineRun.objects.filter(trigger="webhook", status="failed").exists(), timeout=180,
               message="the webhook's run to end")

    # A schedule: the beat picks the new PeriodicTask up without a restart and fires it.
    assert owner_api.patch("/api/v1/pipelines/retrain/", {"schedule": "every 5 seconds"}, format="json").status_code == 200
    scheduled = wait_until(lambda: runs_by("schedule"), timeout=90, message=f"the beat to fire the schedule "
                                                                               f"({beat.log_path})")
    assert scheduled[0].trigger_detail == "every 5 seconds" and scheduled[0].triggered_by is None
    assert owner_api.patch("/api/v1/pipelines/retrain/", {"schedule": ""}, format="json").status_code == 200
    wait_until(lambda: not PipelineRun.objects.filter(status__in=["queued", "running"]).exists(), timeout=180,
               message="the scheduled runs to end")


def _file(name: str, content: bytes):
    import io

    handle = io.BytesIO(content)
    handle.name = name
    return handle
