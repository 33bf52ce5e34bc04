"""A retraining pipeline with the real parts: the Celery worker, the Docker engine, the churn
template's training script, the scoring gateway (ASGI server) and the CLI.

One service is shared by every assertion (the suite runs on 2 cores): a gate that fails, a run
that fails, a changed data file (uploaded at the same moment as a trigger by hand: one update)
that retrains it onto model.pkl v2 (a call before and after through the same URL with the same
key; the answer's header names the version), and a build that fails (its run a quick script that
writes a small model, so the test trains the churn model twice only); each failure leaves the
version before it serving, with the reason on the pipeline run.
"""
from __future__ import annotations

import json
import threading
import urllib.parse

import pytest
import requests

from pipelines.models import PipelineRun
from tests.cli.conftest import assert_one_error_line, cli  # noqa: F401
from tests.deployments.conftest import SAMPLE_REQUEST, wait_for
from tests.gateway.conftest import gateway, gateway_server_process  # noqa: F401
from tests.helpers import wait_until
from tests.pipelines.conftest import CHURN_SCRIPT
from tests.runtime.conftest import TEMPLATE

DATA_FILE = "CATelcoCustomerChurnTrainingSample.csv"

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.e2e]

EXTRA_FILES = {
    "fail.py": b"import sys\nprint('the training data is unreadable', flush=True)\nsys.exit(3)\n",
    "broken-requirements.txt": b"no-such-package-mlportal-xyz==1.0\n",
    "tiny_model.py": (b"import os, pickle\nos.makedirs('outputs', exist_ok=True)\n"
                      b"pickle.dump({'weights': [1, 2, 3]}, open('outputs/model.pkl', 'wb'))\n"),
}


def finished(api, prun_id: str, timeout: float = 300) -> dict:
    def done():
        body = api.get(f"/api/v1/pipeline-runs/{prun_id}/").json()
        return body if body["status"] in ("succeeded", "failed", "skipped", "canceled") else None

    return wait_until(done, timeout=timeout, interval=0.5, message=f"pipeline run {prun_id} to end")


def served_version(gateway, key: str) -> str:
    status, headers, body = gateway.score("churnpred", SAMPLE_REQUEST, key)
    assert status == 200 and body in ("0", "1"), (status, body)
    return headers["x-mlportal-model-version"]


def test_a_retraining_pipeline_moves_the_service_to_v2_at_the_same_url_and_keys(
        deploy_worker, gateway, cli, owner, workspace, owner_api, outsider_api, create_realtime, churn_env_image):  # noqa: F811
    from runs import services as runs_services
    from workspaces import services as workspace_services

    project = runs_services.project_create(workspace=workspace, name="churn_prediction", user=owner, template="churn")
    for path, content in EXTRA_FILES.items():
        runs_services.project_file_put(project=project, path=path, content=content, user=owner)
    assert create_realtime(owner_api, "churnpred").status_code == 201
    service = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    assert service["status"] == "healthy", service["error"]
    key = owner_api.get("/api/v1/services/churnpred/keys/").json()["primary"]
    assert served_version(gateway, key) == "model.pkl:1"

    # The CLI talks to the same ASGI server as the scoring calls.
    _, secret = workspace_services.token_create(user=owner, name="cli")
    assert cli("login", "--url", gateway.url, "--token", secret).code == 0
    created = cli("pipeline", "create", "-n", "churn-retrain", "--project", "churn_prediction", "--script", CHURN_SCRIPT,
                  "--service", "churnpred", "--gate", "DTree Accuracy >= 2")
    assert created.code == 0, created.err
    assert_one_error_line(cli("pipeline", "create", "-n", "other", "--project", "churn_prediction", "--script", CHURN_SCRIPT,
                              "--service", "churnpred", "--gate", "DTree Accuracy >= best"), contains="neither a number")

    # 1. A gate that fails: v1 keeps serving, the reason is on the pipeline run.
    gated = cli("pipeline", "run", "-n", "churn-retrain", "--wait", "--timeout", "300")
    assert_one_error_line(gated, contains="Gate not passed: DTree Accuracy = ")
    assert "[1/6] run: succeeded" in gated.err and "[2/6] gate: failed" in gated.err
    assert served_version(gateway, key) == "model.pkl:1"

    # 2. A run that fails: the same.
    assert owner_api.patch("/api/v1/pipelines/churn-retrain/", {"script": "fail.py", "gate": ""}, format="json").status_code == 200
    prun = finished(owner_api, owner_api.post("/api/v1/pipelines/churn-retrain/run/").json()["id"])
    assert prun["status"] == "failed" and "Step run failed: Run churn_prediction #2 failed" in prun["reason"], prun
    assert "keeps serving model.pkl:1" in prun["reason"]
    assert served_version(gateway, key) == "model.pkl:1"

    # 3. New data: a changed data file, uploaded at the same moment as a trigger by hand, gives one
    # retraining, which moves the service to v2: same URL, same key. Its environment is labelled
    # production, so the model's production alias moves to v2.
    environment = owner_api.get("/api/v1/services/churnpred/").json()["environment"]
    assert owner_api.patch(f"/api/v1/environments/{environment}/", {"labels": {"stage": "production"}},
                           format="json").status_code == 200
    assert owner_api.patch("/api/v1/pipelines/churn-retrain/", {"script": CHURN_SCRIPT, "gate": "DTree Accuracy >= 0.5",
                                                               "when_busy": "skip", "trigger_on_data": True},
                           format="json").status_code == 200
    auth = {"Authorization": f"Bearer {secret}"}
    data = (TEMPLATE / "data" / DATA_FILE).read_bytes() + b"\n"  # changed bytes, the same customers
    answers = {}

    def upload():
        answers["upload"] = requests.post(f"{gateway.url}/api/v1/projects/{project.pk}/upload/", headers=auth, timeout=60,
                                          files={"file": (DATA_FILE, data)}, data={"path": f"data/{DATA_FILE}"})

    def by_hand():
        answers["manual"] = requests.post(f"{gateway.url}/api/v1/pipelines/churn-retrain/run/", headers=auth, timeout=60)

    threads = [threading.Thread(target=upload), threading.Thread(target=by_hand)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers["upload"].status_code == 201 and answers["manual"].status_code == 202, answers
    def retrained():
        phase = PipelineRun.objects.filter(number__gte=3)
        seen_data = phase.filter(trigger="data").exists() or phase.filter(trigger_detail__contains="also data").exists()
        return seen_data and phase.exists() and not phase.filter(status__in=["queued", "running"]).exists()

    wait_until(retrained, timeout=300, interval=0.5, message="the retraining on new data to end")
    phase = list(PipelineRun.objects.filter(number__gte=3).order_by("number"))
    done = [r for r in phase if r.status != "skipped"]
    assert len(done) == 1, [(r.number, r.status, r.trigger, r.reason) for r in phase]
    mentioned = {r.trigger for r in phase} | ({"data"} if "also data: data/" in done[0].trigger_detail else set())
    assert mentioned == {"data", "manual"}, [(r.trigger, r.trigger_detail) for r in phase]
    prun = owner_api.get(f"/api/v1/pipeline-runs/{done[0].pk}/").json()
    assert prun["status"] == "succeeded", prun
    assert [s["status"] for s in prun["steps"]] == ["succeeded"] * 6
    assert (prun["model"], prun["served_model"], prun["revision"]) == ("model.pkl:2", "model.pkl:1", 2)
    steps = {s["name"]: s for s in prun["steps"]}
    assert steps["gate"]["links"]["metric"]["name"] == "DTree Accuracy" and steps["run"]["links"]["run"]["label"] == "churn_prediction #3"
    assert served_version(gateway, key) == "model.pkl:2"
    service = owner_api.get("/api/v1/services/churnpred/").json()
    assert owner_api.get("/api/v1/services/churnpred/keys/").json()["primary"] == key
    assert [r["number"] for r in service["revisions"]] == [2, 1]  # one update, not two
    production = json.loads(cli("model", "alias", "list", "-n", "model.pkl", "--alias", "production", "-o", "json").out)
    assert [(p["version"], p["until"]) for p in production] == [(2, None)]
    assert (f"pipeline churn-retrain run #{prun['number']} deployed it to service 'churnpred' (revision 2)"
            in production[0]["reason"])

    prun_number = prun["number"]

    # 4. A build that fails (a requirement no index has): v2 keeps serving.
    assert owner_api.patch("/api/v1/pipelines/churn-retrain/", {"requirements_path": "broken-requirements.txt", "gate": "",
                                                               "script": "tiny_model.py"},
                           format="json").status_code == 200
    prun = finished(owner_api, owner_api.post("/api/v1/pipelines/churn-retrain/run/").json()["id"])
    assert prun["status"] == "failed" and "Step image failed: Image churnpred:3 failed to build" in prun["reason"], prun
    assert "keeps serving model.pkl:2" in prun["reason"]
    assert served_version(gateway, key) == "model.pkl:2"

    # The history in the CLI; an outsider sees none of it.
    listing = cli("pipeline", "show", "-n", "churn-retrain", "--runs", "-o", "json")
    assert [r["status"] for r in json.loads(listing.out) if r["status"] != "skipped"] == ["failed", "succeeded", "failed", "failed"]
    steps_table = cli("pipeline", "show", "-n", "churn-retrain", "--run", str(prun_number))
    assert steps_table.code == 0 and "deploy" in steps_table.out and "revision 2" in steps_table.out
    assert outsider_api.get("/api/v1/pipelines/churn-retrain/").status_code == 404
    assert outsider_api.get(f"/api/v1/pipeline-runs/{done[0].pk}/").status_code == 404
    assert PipelineRun.objects.filter(status__in=["queued", "running"]).count() == 0
