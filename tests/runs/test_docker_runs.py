"""Runs end to end with the real parts: the Celery worker, the Docker engine and the churn template.

The lab's first half: `experiment submit -c docker CATelcoCustomerChurnModelingWithoutDprep.py`
completes, logs both accuracies as metrics and returns outputs/model.pkl; failures, OOM, time limits,
cancel, an unreachable engine and a killed worker each end the run with the right status and reason.
Every Docker test shares the churn environment image (`churn_env_image`, built at most once).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid

import pytest
from django.db import connections
from django.db.models import Max

from runs import reconcile, services, worker
from runs.models import Run
from runs.selectors import log_since
from tests.helpers import wait_until

CHURN_SCRIPT = "CATelcoCustomerChurnModelingWithoutDprep.py"
SCRIPTS = {
    "fail.py": b"import sys\nprint('about to fail', flush=True)\nsys.exit(3)\n",
    "hog.py": b"print('allocating', flush=True)\nblob = b'x' * (1024 * 1024 * 1024)\nprint(len(blob))\n",
    "slow.py": (b"import time\nfor i in range(600):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.5)\n"),
    "quick.py": b"import os\nos.makedirs('outputs', exist_ok=True)\nopen('outputs/hello.txt', 'w').write('hi')\nprint('quick done')\n",
}


@pytest.fixture
def lab(owner, workspace):
    """The churn project of the lab, plus small scripts that fail, hog memory, run long or end fast."""
    project = services.project_create(workspace=workspace, name="churn_prediction", user=owner, template="churn")
    for path, content in SCRIPTS.items():
        services.project_file_put(project=project, path=path, content=content, user=owner)
    return project


def submit(api, project, script, **extra):
    res = api.post("/api/v1/runs/", {"project": str(project.id), "script": script, **extra}, format="json")
    assert res.status_code == 201, res.json()
    return res.json()["id"]


def wait_for_end(run_id, timeout=240) -> Run:
    wait_until(lambda: Run.objects.get(id=run_id).status in Run.FINISHED, timeout=timeout, interval=0.5,
               message=f"run {run_id} to end")
    return Run.objects.get(id=run_id)


def containers_of(run_id) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mlportal.id={run_id}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def queued_run(project, user, script) -> Run:
    """A queued run that no worker was told about, for tests that execute it in this process."""
    run_id = uuid.uuid4()
    blob = services._snapshot_from_project(project, run_id)
    return Run.objects.create(id=run_id, workspace=project.workspace, project=project, number=(project.runs.aggregate(n=Max("number"))["n"] or 0) + 1,
                              script=script, target="docker", snapshot=blob.storage_name,
                              snapshot_sha256=blob.sha256, created_by=user)


@pytest.mark.docker
@pytest.mark.integration
def test_the_churn_run_completes_with_both_accuracies_and_model_pkl(celery_worker, churn_env_image, owner_api, lab):
    run_id = submit(owner_api, lab, CHURN_SCRIPT, target="docker")
    run = wait_for_end(run_id)
    assert run.status == "completed", (run.status_reason, log_since(run, 0)[0][-2000:])
    assert run.exit_code == 0 and run.image == churn_env_image and run.duration_s > 0
    body = owner_api.get(f"/api/v1/runs/{run_id}/").json()
    assert set(body["metrics"]) == {"DTree Accuracy", "Naive Bayes Accuracy"}
    assert 0.5 < body["metrics"]["DTree Accuracy"] <= 1.0
    outputs = owner_api.get(f"/api/v1/runs/{run_id}/outputs/").json()["results"]
    assert [o["path"] for o in outputs] == ["model.pkl"] and outputs[0]["size"] > 1000
    pickle_bytes = b"".join(owner_api.get(f"/api/v1/runs/{run_id}/outputs/model.pkl").streaming_content)
    assert pickle_bytes[:1] == b"\x80"  # a pickle protocol header
    log = owner_api.get(f"/api/v1/runs/{run_id}/log/").json()["text"]
    assert "DTree Accuracy 0.9" in log or "DTree Accuracy" in log
    assert "##mlportal[metric]" not in log
    assert containers_of(run_id) == []


@pytest.mark.docker
@pytest.mark.integration
def test_log_lines_appear_while_the_run_goes_and_cancel_stops_it(celery_worker, churn_env_image, owner_api, lab):
    run_id = submit(owner_api, lab, "slow.py")
    seen = wait_until(lambda: (lambda b: b["status"] == "running" and "tick 2" in b["text"] and b)(
        owner_api.get(f"/api/v1/runs/{run_id}/log/").json()), timeout=120, interval=0.3, message="live log lines")
    assert seen["done"] is False
    # A new line shows within about a second of the previous one.
    offset = seen["offset"]
    wait_until(lambda: owner_api.get(f"/api/v1/runs/{run_id}/log/?offset={offset}").json()["text"], timeout=2.5,
               interval=0.2, message="the next line")
    res = owner_api.post(f"/api/v1/runs/{run_id}/cancel/")
    assert res.status_code == 200 and res.json()["status"] == "canceled"
    wait_until(lambda: Run.objects.get(id=run_id).exit_code is not None, timeout=30, message="the worker to record the end")
    run = Run.objects.get(id=run_id)
    assert run.status == "canceled" and run.ended_at
    wait_until(lambda: containers_of(run_id) == [], timeout=30, message="the container to be removed")


@pytest.mark.docker
@pytest.mark.integration
def test_a_failing_script_fails_with_its_exit_code_and_keeps_its_log(celery_worker, churn_env_image, owner_api, lab):
    run = wait_for_end(submit(owner_api, lab, "fail.py"))
    assert run.status == "failed" and run.exit_code == 3 and run.status_reason == "exited with code 3"
    assert "about to fail" in log_since(run, 0)[0]


@pytest.mark.docker
@pytest.mark.integration
def test_a_script_over_its_memory_fails_out_of_memory(celery_worker, churn_env_image, owner, owner_api, lab):
    services.project_update_settings(project=lab, user=owner, memory_mb=128)
    run = wait_for_end(submit(owner_api, lab, "hog.py"))
    assert run.status == "failed" and run.oom, (run.status_reason, log_since(run, 0)[0][-1000:])
    assert run.status_reason == "out of memory (limit 128 MiB)"


@pytest.mark.docker
@pytest.mark.integration
def test_a_script_over_its_time_limit_times_out(celery_worker, churn_env_image, owner, owner_api, lab):
    services.project_update_settings(project=lab, user=owner, time_limit_s=3)
    run = wait_for_end(submit(owner_api, lab, "slow.py"))
    assert run.status == "timed_out" and "time limit of 3 s" in run.status_reason
    assert "tick 1" in log_since(run, 0)[0]


@pytest.mark.docker
@pytest.mark.integration
def test_a_run_executed_twice_at_once_starts_one_container(transactional_db, churn_env_image, owner, lab):
    run = queued_run(lab, owner, "quick.py")
    since = str(int(time.time()) - 1)
    results = []

    def execute():
        try:
            results.append(worker.execute(run.id))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=execute) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert sorted(results) == ["completed", "skipped"]
    events = subprocess.run(["docker", "events", "--since", since, "--until", str(int(time.time()) + 1), "--filter",
                             f"label=mlportal.id={run.id}", "--filter", "event=create", "--format", "{{.ID}}"],
                            capture_output=True, text=True, check=True, timeout=30).stdout.split()
    assert len(events) == 1
    # ... and that container carried this portal's label (what its sweeps, and no other portal's, go by).
    from workspaces.instance import portal_instance

    labelled = subprocess.run(["docker", "events", "--since", since, "--until", str(int(time.time()) + 1), "--filter",
                               f"label=mlportal.id={run.id}", "--filter", f"label=mlportal.portal={portal_instance()}",
                               "--filter", "event=create", "--format", "{{.ID}}"],
                              capture_output=True, text=True, check=True, timeout=30).stdout.split()
    assert labelled == events
    run.refresh_from_db()
    assert [o.path for o in run.outputs.all()] == ["hello.txt"]


@pytest.mark.integration
def test_an_unreachable_engine_fails_the_run_with_the_engine_message(transactional_db, settings, owner, lab):
    settings.MLPORTAL_DOCKER_URL = "tcp://127.0.0.1:9"
    run = queued_run(lab, owner, "quick.py")
    assert worker.execute(run.id) == "failed"
    run.refresh_from_db()
    assert run.status == "failed" and run.status_reason.startswith("Docker engine unreachable"), run.status_reason
    assert "127.0.0.1:9" in run.status_reason and "Docker engine unreachable" in log_since(run, 0)[0]


@pytest.mark.docker
@pytest.mark.integration
def test_the_sweep_marks_a_run_lost_when_its_worker_is_killed_and_removes_its_container(
    celery_worker, churn_env_image, settings, owner_api, lab
):
    run_id = submit(owner_api, lab, "slow.py")
    run = wait_until(lambda: (lambda r: r.status == "running" and r.container_id and r)(Run.objects.get(id=run_id)),
                     timeout=120, message="the run to be running in a container")
    host, pid = run.worker.rsplit(":", 1)
    assert int(pid) != celery_worker.pid  # a pool child, not the worker's main process
    os.kill(int(pid), signal.SIGKILL)
    assert containers_of(run_id)  # the container outlives the killed worker process
    settings.MLPORTAL_LOST_AFTER_SECONDS = 4
    wait_until(lambda: run_id in reconcile.sweep_lost_runs()["lost"], timeout=30, interval=1, message="the sweep to mark it lost")
    run = Run.objects.get(id=run_id)
    assert run.status == "lost" and "stopped reporting" in run.status_reason
    assert containers_of(run_id) == []
    # The task was redelivered to a new pool process, whose guarded claim started nothing.
    time.sleep(2)
    assert Run.objects.get(id=run_id).status == "lost" and containers_of(run_id) == []


@pytest.mark.integration
def test_a_local_run_completes_with_its_metrics(celery_worker, local_runs, owner_api, lab):
    run = wait_for_end(submit(owner_api, lab, CHURN_SCRIPT, target="local"), timeout=480)
    assert run.status == "completed", (run.status_reason, log_since(run, 0)[0][-2000:])
    assert run.image.startswith("local:")
    assert set(run.metric_summaries.values_list("name", flat=True)) == {"DTree Accuracy", "Naive Bayes Accuracy"}
    assert list(run.outputs.values_list("path", flat=True)) == ["model.pkl"]


@pytest.mark.docker
@pytest.mark.integration
def test_prepare_builds_or_reuses_the_environment_image_with_its_own_log(celery_worker, churn_env_image, owner_api, lab):
    res = owner_api.post(f"/api/v1/projects/{lab.id}/prepare/", {"target": "docker"}, format="json")
    assert res.status_code == 201
    run = wait_for_end(res.json()["id"], timeout=600)
    assert run.status == "completed" and run.kind == "prepare" and run.image == churn_env_image
    assert f"environment image {churn_env_image} is ready" in log_since(run, 0)[0]
