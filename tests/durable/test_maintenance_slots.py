"""Maintenance has slots of its own: with every run slot busy with long training, a killed service
replica is serving again within 30 s (the issue saw 101 s, and an hour with hour-long runs)."""
from __future__ import annotations

import time

import pytest
from rest_framework.test import APIClient

from compute.engine import connect
from runs import services
from runs.models import Run
from tests.deployments.conftest import SAMPLE_REQUEST, churn, create_realtime, score, wait_for  # noqa: F401
from tests.runtime.conftest import trained_churn  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.integration]

LONG = b"import time\nprint('training', flush=True)\ntime.sleep(600)\n"


@pytest.fixture
def training(owner, workspace):
    project = services.project_create(workspace=workspace, name="training", user=owner)
    services.project_file_put(project=project, path="long.py", content=LONG, user=owner)
    return project


def test_a_killed_replica_serves_again_within_30_s_while_every_run_slot_is_busy(
        workers, owner_api, create_realtime, training):  # noqa: F811
    workers.start("runs", "runs", 1)
    workers.start("maintenance", "builds,deploy,celery", 2, beat=True)
    assert create_realtime(owner_api, "churnpred").status_code in (201, 202)
    service = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    assert service["status"] == "healthy", service["error"]
    key = owner_api.get("/api/v1/services/churnpred/keys/").json()["primary"]

    runs = []
    for _ in range(2):  # one running in the only run slot, one waiting behind it
        res = owner_api.post("/api/v1/runs/", {"project": str(training.id), "script": "long.py", "target": "docker"},
                             format="json")
        assert res.status_code == 201, res.json()
        runs.append(res.json()["id"])
    try:
        workers.wait(lambda: Run.objects.get(id=runs[0]).status == Run.Status.RUNNING, timeout=180, what="training")
        old = service["containers"][0]["container_id"]
        with connect() as client:
            client.containers.get(old).kill()
        killed = time.monotonic()
        assert score(APIClient(), "churnpred", SAMPLE_REQUEST, key=key).status_code != 200

        def serving():
            response = score(APIClient(), "churnpred", SAMPLE_REQUEST, key=key)
            return response.status_code == 200 and response.json() == "0"

        workers.wait(serving, timeout=30, what="the service to serve again", interval=0.3)
        took = time.monotonic() - killed
        assert took < 30
        assert Run.objects.get(id=runs[0]).status == Run.Status.RUNNING  # the run slot never freed up
        assert Run.objects.get(id=runs[1]).status == Run.Status.QUEUED
    finally:
        for run_id in runs:
            owner_api.post(f"/api/v1/runs/{run_id}/cancel/")
        workers.wait(lambda: not Run.objects.filter(id__in=runs, status__in=Run.ACTIVE).exists(), timeout=60,
                     what="the runs to stop")
