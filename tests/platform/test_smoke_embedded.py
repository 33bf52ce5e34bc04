"""The README's first command: `make run` starts the embedded portal (SQLite, file-system broker,
web + worker) that serves pages, and Ctrl-C stops both."""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str = "") -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_make_run_starts_the_embedded_portal_and_ctrl_c_stops_it(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update({"MLPORTAL_DATA_DIR": str(tmp_path / "data"), "PORT": str(port), "MLPORTAL_ADMIN_PASSWORD": "smoke-test-pw-1"})
    log_path = tmp_path / "make-run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["make", "run"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "MLPortal is up at" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        assert f"http://127.0.0.1:{port}/" in log_path.read_text()
        assert "log in as 'admin'" in log_path.read_text()
        # The first run makes sure the engine has the base image (here it is already there).
        assert "[base image] base image python:3.11-slim is present" in log_path.read_text()

        status = 0
        while status != 200 and time.monotonic() < deadline:
            try:
                status, html = _get(f"http://127.0.0.1:{port}/login/")
            except OSError:
                time.sleep(0.5)
        assert status == 200 and "Sign in to MLPortal" in html

        # The health details are for staff: ask as the admin the first start made.
        token = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "manage.py", "create_api_token", "admin"],
                               cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.strip()
        report = {}
        while time.monotonic() < deadline:
            _, body = _get(f"http://127.0.0.1:{port}/healthz?format=json", token)
            report = json.loads(body)
            if report["parts"]["worker"]["ok"]:
                break
            time.sleep(1)
        assert report["parts"]["database"]["ok"] and report["parts"]["database"]["detail"] == "sqlite"
        assert report["parts"]["broker"]["ok"], report
        assert report["parts"]["worker"]["ok"], report
        assert (tmp_path / "data" / "db.sqlite3").exists()
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    # Both children are gone: nothing answers on the port any more.
    time.sleep(1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert "MLPortal stopped." in log_path.read_text()
