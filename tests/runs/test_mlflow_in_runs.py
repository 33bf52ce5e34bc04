"""A Docker run whose script uses MLflow's fluent API logs into its portal run (no network in the
container), through the shim of the runtime folder (see tests/runtime/test_mlflow_shim.py)."""
from __future__ import annotations

import pytest

from tests.runtime.test_mlflow_shim import SCRIPT


@pytest.mark.docker
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_docker_run_logs_mlflow_calls_into_the_portal_run(celery_worker, churn_env_image, owner_api, owner, workspace):
    from runs import services
    from runs.models import Run
    from tests.helpers import wait_until

    project = services.project_create(workspace=workspace, name="churn_prediction", user=owner, template="churn")
    services.project_file_put(project=project, path="mlflow_train.py", content=SCRIPT.encode(), user=owner)
    res = owner_api.post("/api/v1/runs/", {"project": str(project.id), "script": "mlflow_train.py", "target": "docker"}, format="json")
    assert res.status_code == 201, res.json()
    run_id = res.json()["id"]
    wait_until(lambda: Run.objects.get(id=run_id).status in Run.FINISHED, timeout=300, interval=0.5, message="the run to end")
    body = owner_api.get(f"/api/v1/runs/{run_id}/").json()
    log = owner_api.get(f"/api/v1/runs/{run_id}/log/").json()["text"]
    assert body["status"] == "completed", (body["status_reason"], log[-3000:])
    assert body["params"] == {"criterion": "gini", "lr": "0.1", "max_depth": "4"}
    assert body["tags"]["team"] == "churn" and body["tags"]["stage"] == "dev" and body["note"] == "first try"
    assert body["metrics"]["DTree Accuracy"] == 0.93 and body["metrics"]["loss"] == pytest.approx(1 / 3)
    from runs.models import Metric

    diverged = Metric.objects.get(run_id=run_id, name="diverged")  # NaN stored as the MLflow API stores it
    assert (diverged.value, diverged.text, diverged.step) == (None, "NaN", 9)
    outputs = {o["path"] for o in owner_api.get(f"/api/v1/runs/{run_id}/outputs/").json()["results"]}
    assert {"model.txt", "nested/dir/model.txt", "meta/info.json"} <= outputs
    log = owner_api.get(f"/api/v1/runs/{run_id}/log/").json()["text"]
    assert "/opt/mlportal/lib/mlportal_runtime/mlflow_shim/mlflow/__init__.py" in log and "##mlportal[" not in log
