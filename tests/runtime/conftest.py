"""Fixtures for the container runtime: the churn template trained once per session, and scoring
servers started as real subprocesses on free 127.0.0.1 ports. Nothing here needs the database."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "runs" / "project_templates" / "churn"
TRAIN_SCRIPT = "CATelcoCustomerChurnModelingWithoutDprep.py"


def runtime_env(**extra: str) -> dict[str, str]:
    """Return an environment whose PYTHONPATH is the repo, so `azureml` and `mlportal_runtime` resolve."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPORTAL_")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def sample_request() -> dict:
    return json.loads((TEMPLATE / "sample_request.json").read_text())


@pytest.fixture(scope="session")
def sample_record(sample_request) -> dict:
    return sample_request["input_df"][0]


@pytest.fixture(scope="session")
def trained_churn(tmp_path_factory) -> dict:
    """Copy the template, run the training script and churn_schema_gen.py in it as the lab does.

    Returns the app dir (model.pkl copied to its root, as the lab's download step did) and the
    training run's output.
    """
    app = tmp_path_factory.mktemp("churn") / "app"
    shutil.copytree(TEMPLATE, app)
    train = subprocess.run(
        [sys.executable, TRAIN_SCRIPT], cwd=app, env=runtime_env(), capture_output=True, text=True, timeout=300
    )
    assert train.returncode == 0, train.stderr
    shutil.copy(app / "outputs" / "model.pkl", app / "model.pkl")
    schema = subprocess.run(
        [sys.executable, "churn_schema_gen.py"], cwd=app, env=runtime_env(), capture_output=True, text=True, timeout=120
    )
    assert schema.returncode == 0, schema.stderr
    return {"app": app, "stdout": train.stdout, "stderr": train.stderr}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A scoring server subprocess and a small HTTP client for it."""

    def __init__(self, app: Path, workers: int, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.stdout = open(log_dir / f"server-{self.port}.out", "wb")
        self.stderr = open(log_dir / f"server-{self.port}.err", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlportal_runtime.server", "--app-dir", str(app), "--port", str(self.port),
             "--workers", str(workers), "--host", "127.0.0.1"],
            env=runtime_env(**env), stdout=self.stdout, stderr=self.stderr,
        )

    def logs(self) -> str:
        self.stdout.flush()
        self.stderr.flush()
        return (self.log_dir / f"server-{self.port}.out").read_text() + (self.log_dir / f"server-{self.port}.err").read_text()

    def request(self, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 30):
        """Return (status, headers, body bytes) for one request on a fresh connection."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def post_json(self, path: str, body, headers: dict | None = None, timeout: float = 30):
        status, _, data = self.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})}, timeout)
        return status, json.loads(data)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if self.request("GET", "/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the server was not ready after {timeout} s:\n{self.logs()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stdout.close()
        self.stderr.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """Return start(app_dir, workers=2, wait=True, **env) -> Server; every server is stopped at the end."""
    started: list[Server] = []
    log_dir = tmp_path_factory.mktemp("server-logs")

    def start(app: Path, workers: int = 2, wait: bool = True, **env: str) -> Server:
        server = Server(Path(app), workers, env, log_dir)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


SERVICE_KEYS = "primary-key-for-tests,secondary-key-for-tests"


@pytest.fixture(scope="module")
def churn_server(trained_churn, start_server):
    """The churn service with keys, as a deployment runs it."""
    return start_server(
        trained_churn["app"], workers=2, MLPORTAL_SERVICE_NAME="churnpred", MLPORTAL_SERVICE_KEYS=SERVICE_KEYS,
        MLPORTAL_MAX_BODY_BYTES=str(256 * 1024),
    )
