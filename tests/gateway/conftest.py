"""The real ASGI server (uvicorn with the scoring gateway in front of Django) as a subprocess on a
free port against the test database, like pytest-django's live server; and the deployments
fixtures (churn model, built images, the real worker)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.conftest import cli, login, portal  # noqa: F401 (the CLI against the live server)
from tests.conftest import worker_env
from tests.real_parts import missing_part
from tests.deployments.conftest import (  # noqa: F401 (shared fixtures)
    built_image, churn, create_realtime, deploy_worker, storage_root, trained_churn,
)

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path) -> None:
        self.proc, self.port, self.log_path = proc, port, log_path
        self.url = f"http://127.0.0.1:{port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def request(self, method: str, path: str, body=None, *, headers: dict | None = None, timeout: float = 60):
        """(status, headers dict lower-cased, parsed JSON body or text) of one request on a new connection."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
            connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            response = connection.getresponse()
            raw = response.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
            return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
        finally:
            connection.close()

    def score(self, ref: str, body, key: str | None, *, headers: dict | None = None, timeout: float = 60):
        extra = {"Authorization": f"Bearer {key}"} if key else {}
        return self.request("POST", f"/api/v1/services/{ref}/score", body, headers={**extra, **(headers or {})},
                            timeout=timeout)


def start_server(db_settings: dict, log_path: Path, *, workers: int = 1, extra_env: dict | None = None) -> Server:
    port = free_port()
    env = worker_env(db_settings)
    env.update({"WEB_WORKERS": str(workers), "MLPORTAL_GATEWAY_REFRESH_SECONDS": "0.25", **(extra_env or {})})
    if workers > 1:
        folder = log_path.parent / "prometheus"
        folder.mkdir(exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "uvicorn"), "mlportal.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--http", "gateway.server:GatewayHttpProtocol", "--lifespan", "on",
         "--no-access-log"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, port, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the ASGI server exited early:\n{server.log()}")
        try:
            status, _, _ = server.request("GET", "/login/", timeout=5)
            if status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"the ASGI server did not answer within 60 s:\n{server.log()}")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


@pytest.fixture(scope="session")
def gateway_server_process(django_db_setup, django_db_blocker, tmp_path_factory):
    from django.db import connection

    with django_db_blocker.unblock():
        db_settings = dict(connection.settings_dict)
    server = start_server(db_settings, tmp_path_factory.mktemp("gateway") / "server.log")
    yield server
    stop_server(server)


@pytest.fixture
def gateway(gateway_server_process, transactional_db):
    """The portal's ASGI server (gateway + Django) on the test database; use with the real worker."""
    return gateway_server_process


@pytest.fixture
def swarm_env(owner_api):
    """A cluster environment "production" on the shared engine (a single-node swarm manager: .ci/run
    makes it one); afterwards every Swarm service this portal started is removed, so a failing test
    leaves none running."""
    from compute import swarm
    from workspaces.instance import portal_instance

    if not swarm.swarm_status()["manager"]:
        missing_part("Docker engine", "the engine is not a swarm manager (.ci/run runs 'docker swarm init')")
    response = owner_api.post("/api/v1/environments/", {"name": "production", "kind": "cluster",
                                                        "labels": {"stage": "production"}}, format="json")
    assert response.status_code == 201, response.json()
    yield response.json()
    for item in swarm.list_services(portal=portal_instance()):
        swarm.remove_service(item["name"], portal=portal_instance())
