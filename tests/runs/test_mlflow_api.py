"""The portal's MLflow REST API driven by the real `mlflow-skinny` client from PyPI against the live
server: set_experiment / start_run / log_* / end_run land as an `external` run of the project that
shows in the runs list; search, get and metric history read it back; errors come in MLflow's own
shape (another workspace's project → RESOURCE_DOES_NOT_EXIST, a changed or oversized param →
INVALID_PARAMETER_VALUE); NaN is kept and ±Infinity clamped as MLflow's SQL store does."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from runs import services
from runs.models import Metric, Run
from workspaces import services as ws

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CLIENT = r'''
import json, math, sys
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
out = {}
mlflow.set_experiment(sys.argv[1])
with mlflow.start_run(run_name="external-baseline") as run:
    out["run_id"] = run.info.run_id
    mlflow.log_param("max_depth", 4)
    mlflow.log_params({"criterion": "gini", "lr": 0.1})
    mlflow.log_metric("DTree Accuracy", 0.93)
    for step in range(5):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_metrics({"f1": 0.8, "auc": 0.9}, step=2)
    mlflow.set_tag("team", "churn")
    mlflow.set_tags({"stage": "dev"})
    mlflow.log_metric("diverged", float("nan"))
    mlflow.log_metric("huge", float("inf"))
    try:
        mlflow.log_param("max_depth", 5)
    except MlflowException as exc:
        out["changed_param"] = [exc.error_code, exc.message]
client = MlflowClient()
got = client.get_run(out["run_id"])
out["status"] = got.info.status
out["params"] = got.data.params
out["tags"] = {k: v for k, v in got.data.tags.items() if not k.startswith("mlflow.")}
out["metrics"] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in got.data.metrics.items()}
out["history"] = [(m.step, m.value) for m in client.get_metric_history(out["run_id"], "loss")]
found = client.search_runs([got.info.experiment_id], filter_string='metrics.`DTree Accuracy` > 0.9 and params.max_depth = "4"',
                           order_by=["metrics.loss DESC"])
out["found"] = [r.info.run_id for r in found]
out["none"] = len(client.search_runs([got.info.experiment_id], filter_string='tags.team = "fraud"'))
try:
    client.get_experiment(sys.argv[2])
except MlflowException as exc:
    out["foreign"] = exc.error_code
print(json.dumps(out))
'''


@pytest.fixture
def tracking(live_server, owner, workspace, monkeypatch):
    _, token = ws.token_create(user=owner, name="mlflow")
    return {"MLFLOW_TRACKING_URI": f"{live_server.url}/mlflow", "MLFLOW_TRACKING_TOKEN": token,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def test_the_stock_mlflow_client_logs_an_external_run_into_a_project(tracking, owner_api, owner, workspace, outsider):
    foreign = services.project_create(workspace=outsider.memberships.get().workspace, name="secret", user=outsider)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **tracking}
    done = subprocess.run([sys.executable, "-c", CLIENT, "churnpred", str(foreign.pk)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    run = Run.objects.get(id=out["run_id"])
    assert run.target == "external" and run.project.name == "churnpred" and run.project.workspace_id == workspace.id
    assert run.status == "completed" and run.script == "external-baseline" and run.ended_at is not None
    assert out["status"] == "FINISHED"
    assert out["params"] == {"max_depth": "4", "criterion": "gini", "lr": "0.1"}
    assert out["tags"] == {"team": "churn", "stage": "dev"}
    assert out["changed_param"][0] == "INVALID_PARAMETER_VALUE" and "already logged" in out["changed_param"][1]
    assert out["metrics"]["DTree Accuracy"] == 0.93 and out["metrics"]["loss"] == 0.2
    assert out["metrics"]["diverged"] is None and out["metrics"]["huge"] == 1.7976931348623157e308
    assert out["history"] == [[0, 1.0], [1, 0.5], [2, 1 / 3], [3, 0.25], [4, 0.2]]
    assert out["found"] == [out["run_id"]] and out["none"] == 0
    assert out["foreign"] == "RESOURCE_DOES_NOT_EXIST"
    assert Metric.objects.get(run=run, name="diverged").text == "NaN"
    listed = owner_api.get("/api/v1/runs/", {"target": "external"}).json()["results"]
    assert [r["id"] for r in listed] == [str(run.id)] and listed[0]["target"] == "external"
    assert listed[0]["params"]["max_depth"] == "4"


def _call(tracking, path, body=None, *, token=None, method="POST"):
    headers = {"Authorization": f"Bearer {token or tracking['MLFLOW_TRACKING_TOKEN']}"}
    url = f"{tracking['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/{path}"
    if method == "GET":
        return requests.get(url, params=body, headers=headers, timeout=30)
    return requests.post(url, json=body, headers=headers, timeout=30)


def test_bad_calls_answer_in_mlflows_error_shape(tracking, owner, workspace, outsider):
    project = services.project_create(workspace=workspace, name="churnpred", user=owner)
    run_id = _call(tracking, "runs/create", {"experiment_id": str(project.pk), "start_time": 1700000000000}).json()["run"]["info"]["run_id"]
    _, outsider_token = ws.token_create(user=outsider, name="o")
    res = _call(tracking, "runs/log-metric", {"run_id": run_id, "key": "a", "value": 1, "timestamp": 1, "step": 0}, token=outsider_token)
    assert res.status_code == 404 and res.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    res = _call(tracking, "experiments/get", {"experiment_id": str(project.pk)}, token=outsider_token, method="GET")
    assert res.status_code == 404 and set(res.json()) == {"error_code", "message"}
    res = _call(tracking, "runs/log-parameter", {"run_id": run_id, "key": "blob", "value": "x" * 6001})
    assert res.status_code == 400 and res.json()["error_code"] == "INVALID_PARAMETER_VALUE" and "6000" in res.json()["message"]
    assert _call(tracking, "runs/log-parameter", {"run_id": run_id, "key": "p", "value": "1"}).status_code == 200
    res = _call(tracking, "runs/log-batch", {"run_id": run_id, "params": [{"key": "p", "value": "2"}],
                                            "metrics": [{"key": "m", "value": 1, "timestamp": 1, "step": 0}]})
    assert res.status_code == 400 and res.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert not Metric.objects.filter(run_id=run_id, name="m").exists()  # the refused batch stored nothing
    res = _call(tracking, "runs/log-batch", {"run_id": run_id, "metrics": [{"key": "m", "value": 1, "timestamp": 1}] * 1001})
    assert res.status_code == 400 and "at most 1000 metrics" in res.json()["message"]
    res = _call(tracking, "runs/log-metric", {"run_id": run_id, "key": "m", "value": "high", "timestamp": 1})
    assert res.status_code == 400 and res.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    res = _call(tracking, "runs/search", {"experiment_ids": [str(project.pk)], "filter": "metrics.m >> 1"})
    assert res.status_code == 400 and "character 12" in res.json()["message"]
    res = _call(tracking, "runs/create", {"experiment_id": "0"})
    assert res.status_code == 404 and "set_experiment" in res.json()["message"]
    res = _call(tracking, "runs/get", {"run_id": run_id}, token="mlp_wrong", method="GET")
    assert res.status_code == 401 and res.json()["error_code"] == "UNAUTHENTICATED"
    res = requests.post(f"{tracking['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/runs/create", json={}, timeout=30)
    assert res.status_code == 401 and "MLFLOW_TRACKING_TOKEN" in res.json()["message"]
    res = _call(tracking, "model-versions/create", {})
    assert res.status_code == 404 and res.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    res = _call(tracking, "experiments/create", {"name": "churnpred"})
    assert res.status_code == 400 and res.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"


def test_a_reader_can_read_but_not_log(tracking, owner, workspace, reader):
    project = services.project_create(workspace=workspace, name="churnpred", user=owner)
    run_id = _call(tracking, "runs/create", {"experiment_id": str(project.pk)}).json()["run"]["info"]["run_id"]
    _, token = ws.token_create(user=reader, name="r")
    assert _call(tracking, "runs/get", {"run_id": run_id}, token=token, method="GET").status_code == 200
    res = _call(tracking, "runs/set-tag", {"run_id": run_id, "key": "a", "value": "b"}, token=token)
    assert res.status_code == 403 and res.json()["error_code"] == "PERMISSION_DENIED"
    res = _call(tracking, "runs/create", {"experiment_id": str(project.pk)}, token=token)
    assert res.status_code == 403 and res.json()["error_code"] == "PERMISSION_DENIED"


def test_a_read_only_token_reads_but_cannot_log(tracking, owner, workspace):
    project = services.project_create(workspace=workspace, name="churnpred", user=owner)
    run_id = _call(tracking, "runs/create", {"experiment_id": str(project.pk)}).json()["run"]["info"]["run_id"]
    _, token = ws.token_create(user=owner, name="dashboards", read_only=True)
    assert _call(tracking, "runs/get", {"run_id": run_id}, token=token, method="GET").status_code == 200
    res = _call(tracking, "runs/set-tag", {"run_id": run_id, "key": "a", "value": "b"}, token=token)
    assert res.status_code == 403 and res.json()["error_code"] == "PERMISSION_DENIED" and "read-only" in res.json()["message"]


def test_log_batch_refuses_one_param_twice_and_stores_nan_and_infinities_as_mlflow_does(tracking, owner, workspace):
    project = services.project_create(workspace=workspace, name="churnpred", user=owner)
    run_id = _call(tracking, "runs/create", {"experiment_id": str(project.pk)}).json()["run"]["info"]["run_id"]
    res = _call(tracking, "runs/log-batch", {"run_id": run_id, "params": [{"key": "lr", "value": "0.1"},
                                                                          {"key": "lr", "value": "0.2"}],
                                            "metrics": [{"key": "m", "value": 1.5, "timestamp": 1, "step": 0}]})
    assert res.status_code == 400 and res.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "'lr'" in res.json()["message"] and "MLflow refuses it too" in res.json()["message"]
    assert not Metric.objects.filter(run_id=run_id).exists()  # nothing of the refused batch
    # JSON's NaN / Infinity literals and MLflow's spelled values; finite floats, whole numbers.
    raw = ('{"run_id": "%s", "metrics": [{"key": "a", "value": NaN, "timestamp": 1000, "step": 1},'
           ' {"key": "b", "value": Infinity, "timestamp": 1000, "step": 1},'
           ' {"key": "c", "value": "-Infinity", "timestamp": 1000, "step": 1},'
           ' {"key": "d", "value": 0.25, "timestamp": 2000, "step": 2}, {"key": "e", "value": 3, "timestamp": 2000}]}' % run_id)
    res = requests.post(f"{tracking['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/runs/log-batch", data=raw, timeout=30,
                        headers={"Authorization": f"Bearer {tracking['MLFLOW_TRACKING_TOKEN']}",
                                 "Content-Type": "application/json"})
    assert res.status_code == 200, res.text
    stored = {m.name: (m.value, m.text, m.step) for m in Metric.objects.filter(run_id=run_id)}
    assert stored == {"a": (None, "NaN", 1), "b": (1.7976931348623157e308, "", 1), "c": (-1.7976931348623157e308, "", 1),
                      "d": (0.25, "", 2), "e": (3.0, "", 0)}
    assert Metric.objects.get(run_id=run_id, name="d").logged_at.timestamp() == 2.0


SAME_CALLS = r'''
import mlflow
mlflow.set_experiment("churnpred")
with mlflow.start_run():
    mlflow.log_metric("diverged", float("nan"), step=1)
    mlflow.log_metric("huge", float("inf"), step=2)
    mlflow.log_metrics({"floor": float("-inf"), "fine": 0.5}, step=3)
'''


def test_nan_and_infinities_logged_inside_a_run_are_stored_as_the_mlflow_api_stores_them(tracking, owner, workspace,
                                                                                      tmp_path):
    # The same mlflow calls, (a) by the real client against the portal's MLflow API, (b) inside a run
    # through the runtime's shim, its stdout read by the worker's own sink: the rows must be the same
    # (the runtime used to skip NaN and infinities while the API stored them).
    from runs import worker
    from tests.runtime.test_mlflow_shim import _bare_venv, _run, _runtime_lib

    project = services.project_create(workspace=workspace, name="churnpred", user=owner)
    services.project_file_put(project=project, path="train.py", content=b"print(1)\n", user=owner)
    done = subprocess.run([sys.executable, "-c", SAME_CALLS], env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **tracking},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    external = Run.objects.get(project=project, target="external")

    work = tmp_path / "work"
    work.mkdir()
    shim = _run(_bare_venv(tmp_path) / "bin" / "python", _runtime_lib(tmp_path), work, SAME_CALLS)
    assert shim.returncode == 0 and "not logged" not in shim.stderr, shim.stderr
    inside = worker.run_claim(run_id=services.run_submit(project=project, script="train.py", user=owner).id, worker="t:1")
    sink = worker.RunSink(inside)
    for line in shim.stdout.splitlines():
        sink.output(line)
    sink.flush()

    def rows(run):
        return sorted((m.name, m.value, m.text, m.step) for m in Metric.objects.filter(run=run))

    top = 1.7976931348623157e308
    assert rows(inside) == rows(external) == [("diverged", None, "NaN", 1), ("fine", 0.5, "", 3),
                                              ("floor", -top, "", 3), ("huge", top, "", 2)]
