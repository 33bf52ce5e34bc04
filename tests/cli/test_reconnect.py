"""Following a run or a build rides out a portal restart: the CLI says it is reconnecting, retries with a
back-off, and goes on printing the log once the portal is back (the issue saw exit 1 at the first
refused connection). The portal is a real gunicorn process on the test database, stopped and
started again on the same port; the run is recorded through the worker-side services."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from django.db import connection, transaction

from runs import services, worker
from runs.models import Run
from tests.conftest import REPO, worker_env
from tests.helpers import wait_until
from workspaces.services import token_create

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Portal:
    def __init__(self, port: int, log):
        self.port, self.log, self.proc = port, log, None
        self.env = worker_env(dict(connection.settings_dict))

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "gunicorn") if (REPO / ".venv" / "bin" / "gunicorn").exists() else "gunicorn",
             "mlportal.wsgi", "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--threads", "2"],
            cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/login/", timeout=2):
                    return True
            except OSError:
                return False

        wait_until(up, timeout=60, interval=0.2, message="gunicorn to answer")

    def stop(self) -> None:
        import os

        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def followed(transactional_db, owner, workspace, tmp_path):
    """(run, portal, start_cli): a running run with one log line, a live gunicorn portal, and
    start_cli(**env) that starts `mlportal run logs <run> -f` against it."""
    project = services.project_create(workspace=workspace, name="followed", user=owner)
    services.project_file_put(project=project, path="train.py", content=b"print('x')\n", user=owner)
    with transaction.atomic():  # claimed before commit, so no worker that may be listening starts it
        run = services.run_submit(project=project, script="train.py", args=[], target="docker", user=owner)
        worker.run_claim(run_id=run.id, worker="tests")
    worker.run_mark_running(run_id=run.id, image="mlportal-env:test")
    worker.run_append_log(run_id=run.id, workspace_id=run.workspace_id, lines=["epoch 1"])
    _, token = token_create(user=owner, name="cli")
    portal = Portal(_free_port(), open(tmp_path / "gunicorn.log", "w"))
    portal.start()
    procs = []

    def start_cli(**extra):
        env = {**portal.env, "MLPORTAL_URL": f"http://127.0.0.1:{portal.port}", "MLPORTAL_TOKEN": token,
               "MLPORTAL_CONFIG": str(tmp_path / "cli.json"), **extra}
        proc = subprocess.Popen([sys.executable, "-m", "mlportal_cli", "run", "logs", str(run.id), "-f"], cwd=tmp_path,
                                env=env, stdout=open(tmp_path / "out.txt", "w"), stderr=open(tmp_path / "err.txt", "w"))
        procs.append(proc)
        wait_until(lambda: "epoch 1" in text("out.txt"), timeout=30, message="the first line")
        return proc

    text = lambda name: (tmp_path / name).read_text()  # noqa: E731
    start_cli.text = text
    yield run, portal, start_cli
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    if portal.proc.poll() is None:
        portal.stop()


def test_following_a_run_rides_out_a_portal_restart(followed):
    run, portal, start_cli = followed
    text = start_cli.text
    cli = start_cli()
    portal.stop()
    worker.run_append_log(run_id=run.id, workspace_id=run.workspace_id, lines=["epoch 2 (while the portal was away)"])
    wait_until(lambda: text("err.txt").count("reconnecting") >= 2, timeout=30, message="the CLI to say it reconnects")
    assert cli.poll() is None, text("err.txt")
    time.sleep(2)
    portal.start()
    worker.run_append_log(run_id=run.id, workspace_id=run.workspace_id, lines=["epoch 3"])
    wait_until(lambda: "epoch 3" in text("out.txt"), timeout=30, message="the log after the restart")
    worker.run_finish(run_id=run.id, status=Run.Status.COMPLETED, exit_code=0)
    assert cli.wait(timeout=30) == 0, text("err.txt")
    assert text("out.txt").splitlines() == ["epoch 1", "epoch 2 (while the portal was away)", "epoch 3"]
    err_text = text("err.txt")
    assert "lost the portal (cannot reach the portal at" in err_text and "Connection refused" in err_text
    assert "reconnected to the portal after" in err_text and "completed" in err_text
    # The waits grow: 0.5 s, 1 s, 2 s …
    assert "reconnecting in 0.5 s" in err_text and "reconnecting in 1 s" in err_text


def test_following_gives_up_after_its_patience_with_one_error_line(followed):
    run, portal, start_cli = followed
    cli = start_cli(MLPORTAL_CLI_RECONNECT_SECONDS="3")
    portal.stop()
    assert cli.wait(timeout=30) == 1
    err_lines = start_cli.text("err.txt").strip().splitlines()
    assert err_lines[-1].startswith("error: cannot reach the portal") and "gave up reconnecting after 3 s" in err_lines[-1]
    assert "Traceback" not in start_cli.text("err.txt")


def test_following_a_build_rides_out_a_portal_restart(transactional_db, owner, workspace, tmp_path):
    """`mlportal image logs -f` goes on through a restart as following a run does (the same
    patient read), and ends with the build's outcome."""
    from registry.models import Image, Manifest
    from registry.worker import BuildLog, image_finish

    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag="mlportal/t:1",
                                 status=Image.Status.BUILDING)
    log = BuildLog(image)
    log("step 1/3 : FROM mlportal-env")
    log.flush()
    _, token = token_create(user=owner, name="cli")
    portal = Portal(_free_port(), open(tmp_path / "gunicorn.log", "w"))
    portal.start()
    text = lambda name: (tmp_path / name).read_text()  # noqa: E731
    env = {**portal.env, "MLPORTAL_URL": f"http://127.0.0.1:{portal.port}", "MLPORTAL_TOKEN": token,
           "MLPORTAL_CONFIG": str(tmp_path / "cli.json")}
    cli = subprocess.Popen([sys.executable, "-m", "mlportal_cli", "image", "logs", str(image.pk), "-f"], cwd=tmp_path,
                           env=env, stdout=open(tmp_path / "out.txt", "w"), stderr=open(tmp_path / "err.txt", "w"))
    try:
        wait_until(lambda: "step 1/3" in text("out.txt"), timeout=30, message="the first line")
        portal.stop()
        log("step 2/3 : COPY app (while the portal was away)")
        log.flush()
        wait_until(lambda: text("err.txt").count("reconnecting") >= 2, timeout=30, message="the CLI to say it reconnects")
        assert cli.poll() is None, text("err.txt")
        portal.start()
        log("step 3/3 : LABEL")
        log.flush()
        wait_until(lambda: "step 3/3" in text("out.txt"), timeout=30, message="the log after the restart")
        assert image_finish(image, status=Image.Status.SUCCEEDED, image_id="sha256:" + "1" * 64)
        assert cli.wait(timeout=30) == 0, text("err.txt")
    finally:
        if cli.poll() is None:
            cli.kill()
        if portal.proc.poll() is None:
            portal.stop()
    assert text("out.txt").splitlines() == ["step 1/3 : FROM mlportal-env", "step 2/3 : COPY app (while the portal was away)",
                                            "step 3/3 : LABEL"]
    assert "reconnected to the portal after" in text("err.txt") and "Traceback" not in text("err.txt")
