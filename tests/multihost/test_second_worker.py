"""Issue 19, workers on more than one host: a second worker in a container of the portal's own image
(its own filesystem; it shares nothing with this host but the network: PostgreSQL, Redis, the S3
server and the Docker engine, each reached over its bridge) takes a run, an image build and a
deploy. The portal on this host shows that run's live log, metrics and outputs as it shows a local
one, and the service the second worker deployed scores through the portal's gateway here.

The test's portal and the second worker use a Redis database of their own, which no worker of this
host listens on: every task of the test can only be taken by the second worker.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from tests.gateway.conftest import start_server, stop_server
from tests.helpers import wait_until
from tests.multihost.conftest import S3_KEYS, isolated_broker_url, start_second_worker, stop_second_worker

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.e2e]

TRAIN = b"""import os
import time
from mlportal_runtime import get_logger

log = get_logger()
print("epoch 0 started", flush=True)
for epoch in range(8):
    log.log("loss", 1.0 / (epoch + 1), step=epoch)
    print(f"epoch {epoch} done", flush=True)
    time.sleep(0.6)
os.makedirs("outputs", exist_ok=True)
with open("outputs/weights.json", "w") as handle:
    handle.write('{"threshold": 42}')
print("training finished", flush=True)
"""
SCORE = b"""import json
import os

threshold = None


def init():
    global threshold
    with open("model.json") as handle:
        threshold = json.load(handle)["threshold"]


def run(data):
    return {"above": [value > threshold for value in data["values"]]}
"""
SCHEMA = json.dumps({"inputs": {"data": {"kind": "json", "type": "object", "example": {"values": [1, 50]}}}}).encode()


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **kw):
        return self.session.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, **kw):
        return self.session.post(self.url + path, timeout=60, **kw)

    def put(self, path: str, **kw):
        return self.session.put(self.url + path, timeout=60, **kw)


@pytest.fixture
def two_hosts(second_host_network, portal_image, s3_server, s3_bucket, transactional_db, tmp_path):
    """This host's portal (ASGI server with the gateway) on S3 storage, and the second worker."""
    from django.conf import settings
    from django.db import connection

    host = second_host_network
    db = dict(connection.settings_dict)
    broker = isolated_broker_url(settings.CELERY_BROKER_URL)
    server = start_server(db, tmp_path / "server.log", extra_env={
        "CELERY_BROKER_URL": broker, "MLPORTAL_STORAGE": "s3", "MLPORTAL_S3_BUCKET": s3_bucket,
        "MLPORTAL_S3_ENDPOINT_URL": s3_server.endpoint, **S3_KEYS, "SECRET_KEY": settings.SECRET_KEY,
        "MLPORTAL_PUBLISH_ADDRESSES": f"127.0.0.1,{host.gateway}"})
    worker = start_second_worker(image=portal_image, host=host, db=db, broker_db=int(urlparse(broker).path.strip("/")),
                                 bucket=s3_bucket, secret_key=settings.SECRET_KEY)
    try:
        yield host, server, worker, broker
    finally:
        logs = worker.logs()
        stop_second_worker(worker)
        _remove_started_containers()
        stop_server(server)
        print("second worker's log:\n" + logs)


def _remove_started_containers() -> None:
    from compute.runner import list_containers, remove_container
    from workspaces.instance import portal_instance

    instance = portal_instance()
    for kind in ("service", "run"):
        for container in list_containers(kind):
            if container["labels"].get("mlportal.portal") == instance:
                remove_container(container["id"])


def test_a_worker_on_another_host_runs_builds_and_deploys_with_shared_storage(two_hosts, owner, workspace, settings,
                                                                             s3_server, s3_bucket):
    from deployments.models import Environment, Service
    from registry.models import Model
    from runs.models import Run
    from workspaces import services as workspace_services

    host, server, worker, broker = two_hosts
    _, token = workspace_services.token_create(user=owner, name="multihost")
    api = Api(server.url, token)
    # The second host reaches this host's engine over TCP; what it starts publishes on the address
    # both this host's gateway and the second host reach (for a real LAN: that host's address).
    Environment.objects.create(workspace=workspace, name="second-host", publish_address=host.gateway, created_by=owner)

    # Storage as the second host sees it: the management command writes, reads and deletes a probe.
    probe = worker.exec("python", "manage.py", "check_storage")
    assert probe.returncode == 0 and f"S3 bucket '{s3_bucket}'" in probe.stdout, probe.stdout + probe.stderr + worker.logs()

    # One image build and deploy, and one run, both queued at once (the worker has three slots).
    created = api.post("/api/v1/services/create-realtime/", data={"name": "hostsvc", "runtime": "python",
                                                                 "environment": "second-host"}, files={
        "model_file": ("model.json", b'{"threshold": 42}'), "score_file": ("score.py", SCORE),
        "schema_file": ("service_schema.json", SCHEMA)})
    assert created.status_code == 201, created.text
    # Captured data too: its replicas start with capture on; the second worker's collector stores it.
    capture = api.session.patch(server.url + "/api/v1/services/hostsvc/", json={"capture": {"mode": "both", "percent": 100}},
                                timeout=60)
    assert capture.status_code == 200, capture.text
    project = api.post("/api/v1/projects/", json={"name": "hosts", "requirements": ""})
    assert project.status_code == 201, project.text
    assert api.put(f"/api/v1/projects/{project.json()['id']}/files/train.py", data=TRAIN).status_code in (200, 201)
    submitted = api.post("/api/v1/runs/", json={"project": "hosts", "script": "train.py", "target": "docker"})
    assert submitted.status_code == 201, submitted.text
    run_id = submitted.json()["id"]

    # Live: lines reach the portal while the run is still running on the other host.
    def live_line():
        body = api.get(f"/api/v1/runs/{run_id}/log/").json()
        return body["status"] == "running" and "epoch 1 done" in body["text"]

    wait_until(live_line, timeout=150, interval=0.3, message="a live log line of the run on the second host")
    wait_until(lambda: api.get(f"/api/v1/runs/{run_id}/").json()["status"] in ("completed", "failed"), timeout=60,
               interval=0.5, message="the run to end")
    run = api.get(f"/api/v1/runs/{run_id}/").json()
    assert run["status"] == "completed", (run, api.get(f"/api/v1/runs/{run_id}/log.txt").text[-2000:])
    assert Run.objects.get(id=run_id).worker.startswith(f"{worker.hostname}:")
    assert run["metrics"] == {"loss": pytest.approx(1 / 8)}
    series = api.get(f"/api/v1/runs/{run_id}/metrics/").json()
    assert json.dumps(series).count('"step"') >= 8 or "loss" in json.dumps(series), series
    log_text = api.get(f"/api/v1/runs/{run_id}/log.txt").text
    assert "epoch 0 started" in log_text and "training finished" in log_text and "loss" not in log_text.split("[mlportal]")[0]
    outputs = api.get(f"/api/v1/runs/{run_id}/outputs/").json()["results"]
    assert [o["path"] for o in outputs] == ["weights.json"], outputs
    assert api.get(f"/api/v1/runs/{run_id}/outputs/weights.json").content == b'{"threshold": 42}'

    # The service: built and deployed by the second worker, scored through this host's gateway.
    def settled():
        body = api.get("/api/v1/services/hostsvc/").json()
        return body if body["status"] in ("healthy", "unhealthy", "failed") else None

    service = wait_until(settled, timeout=240, interval=0.5, message="the service to be deployed")
    image = api.get(f"/api/v1/images/{service['image_id']}/").json()
    assert image["status"] == "succeeded", image
    build_log = api.get(f"/api/v1/images/{service['image_id']}/log/").json()
    assert "built " in json.dumps(build_log), build_log
    assert service["status"] == "healthy", (service, worker.logs())
    replicas = list(Service.objects.get(name="hostsvc").replica_set.values_list("host", flat=True))
    assert replicas == [host.gateway]
    key = api.get("/api/v1/services/hostsvc/keys/").json()["primary"]
    for values in ([1, 50], [43], [7]):
        status, _, body = server.score("hostsvc", {"data": {"values": values}}, key)
        assert (status, body) == (200, {"above": [v > 42 for v in values]})

    # The second worker pulls the replica's spool (over the address it published on) into the bucket;
    # the portal here reads the Parquet from there.
    from mlportal.celery import app
    from monitoring.worker import collect_capture

    with app.connection_for_write(broker) as connection:  # the test's broker: only the second worker listens
        collect_capture.apply_async(connection=connection)
    wait_until(lambda: api.get("/api/v1/services/hostsvc/data/").json()["count"] == 3, timeout=60, interval=0.5,
               message="the second worker to store the captured rows")

    # Every file is in the bucket, none in this host's data folder; the second worker took every task.
    keys = s3_server.keys(s3_bucket)
    stored = Run.objects.get(id=run_id)
    assert stored.snapshot in keys and stored.outputs.get().storage_name in keys, keys
    assert Model.objects.get(workspace=workspace).file in keys and any(k.endswith("/score.py") for k in keys), keys
    service_id = str(Service.objects.get(name="hostsvc").pk)
    assert any(k.startswith(f"capture/{service_id}/model_version=") and k.endswith(".parquet") for k in keys), keys
    assert not (Path(settings.MEDIA_ROOT) / stored.snapshot).exists()
    logs = worker.logs()
    for task in ("runs.tasks.", "registry.tasks.", "deployments.tasks."):
        assert f"Task {task}" in logs, logs
    assert host.forwarder.refused == 0

    # A container on another bridge (the default one: builds, anything) reaches the gateway address by
    # routing, but the forwarder shuts the door on it: PostgreSQL answers the second host alone.
    # PostgreSQL answers an SSLRequest with one byte ('S' or 'N'); a refused connection reads none.
    probe = ("import socket, struct\ns = socket.create_connection(('%s', %d), timeout=10)\ns.settimeout(10)\n"
             "try:\n    s.sendall(struct.pack('!ii', 8, 80877103))\n    n = len(s.recv(100))\n"
             "except (ConnectionResetError, BrokenPipeError):\n    n = 0\nprint('answer', n)\n"
             % (host.gateway, host.ports["postgres"]))
    outsider = subprocess.run(["docker", "run", "--rm", "--label", "mlportal.test=multihost", "python:3.11-slim",
                               "python3", "-c", probe], capture_output=True, text=True, timeout=60)
    assert outsider.stdout.strip() == "answer 0", outsider.stdout + outsider.stderr
    assert host.forwarder.refused == 1
