"""`make run` supervises its children (scripts/run_portal.py): a worker that dies is started again
with a line in the output while the web server stays up, and Ctrl-C stops everything within a few
seconds."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import REPO, worker_env

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _wait(predicate, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def _pids(log: Path, name: str) -> list[int]:
    return [int(p) for p in re.findall(rf"\[portal\] started {name} \(pid (\d+)\)", log.read_text())]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_dead_worker_is_restarted_while_web_stays_up_and_ctrl_c_stops_everything(transactional_db, tmp_path):
    port = _free_port()
    env = worker_env(dict(connection.settings_dict))
    env.update({"PORT": str(port), "WEB_WORKERS": "1", "WORKER_CONCURRENCY": "1", "MAINTENANCE_CONCURRENCY": "1"})
    log = tmp_path / "portal.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "scripts/run_portal.py"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        login = f"http://127.0.0.1:{port}/login/"
        _wait(lambda: _status(login) == 200, 90, "the web server", log)
        ready = lambda: len(re.findall(r"runs@\S+ ready", log.read_text()))  # noqa: E731
        _wait(lambda: ready() == 1 and re.search(r"maintenance@\S+ ready", log.read_text()), 90, "the workers", log)
        [first] = _pids(log, "runs worker")
        [web] = _pids(log, "web")
        os.killpg(first, signal.SIGKILL)  # the worker and its pool die at once, as in an OOM kill

        _wait(lambda: re.search(rf"runs worker \(pid {first}\) exited with code -9; restarting it in \d", log.read_text()),
              10, "the supervisor to notice", log)
        second = _wait(lambda: [p for p in _pids(log, "runs worker") if p != first], 15, "the restart", log)[0]
        assert _alive(second) and _alive(web)
        assert _status(login) == 200  # web was never taken down with it
        _wait(lambda: ready() == 2, 60, "the new worker to connect", log)

        children = [web, second, *_pids(log, "maintenance worker")]
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to the foreground process
        proc.wait(timeout=15)
        took = time.monotonic() - started
        assert took < 10, f"stopping took {took:.1f} s"
        _wait(lambda: not any(_alive(pid) for pid in children), 3, "every child to be gone", log)
        assert _status(login) == 0
        assert "MLPortal stopped." in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _pids(log, r"[\w ]+"):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _queues(argv: list[str]) -> set[str]:
    return set(argv[argv.index("-Q") + 1].split(","))


def test_make_run_and_compose_give_maintenance_its_own_worker(settings):
    """Every queue is served; the runs worker serves runs only; beat lives with maintenance."""
    import yaml

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import run_portal
    finally:
        sys.path.pop(0)
    all_queues = set(settings.CELERY_QUEUE_TIME_LIMITS)
    workers = [c.argv for c in run_portal.children() if "worker" in c.argv]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    workers_in_compose = [s["command"].split() for s in compose.values() if "worker" in str(s.get("command", "")).split()]
    for argvs in (workers, workers_in_compose):
        assert len(argvs) == 2
        runs, maintenance = sorted(argvs, key=lambda argv: "runs" not in _queues(argv))
        assert _queues(runs) == {"runs"} and "--beat" not in runs
        assert _queues(maintenance) == all_queues - {"runs"} and "--beat" in maintenance
    assert compose["maintenance"]["volumes"] == compose["worker"]["volumes"]
    assert compose["maintenance"]["environment"] == compose["web"]["environment"]
