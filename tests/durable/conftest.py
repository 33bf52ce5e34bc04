"""Fixtures of the durability tests: a Redis server of the test's own (so it can be killed and
restarted without touching the shared one), the test process's Celery app pointed at it, and
workers started the way `make run` starts them (a runs worker, a maintenance worker with beat)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import REPO, worker_env
from tests.real_parts import missing_part


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server on a free port of 127.0.0.1 with its own folder and no persistence, so a
    restart loses every message, as the issue saw."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=open(self.folder / "redis.log", "a"), stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not start:\n{(self.folder / 'redis.log').read_text()[-2000:]}")

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_timeout=2)

    def length(self, queue: str) -> int:
        return self.client().llen(queue)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path):
    if not shutil.which("redis-server"):
        missing_part("Redis", "redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


def _forget_connections() -> None:
    """Drops every broker connection the test process holds. kombu keeps its connection and
    producer pools in global registries keyed by broker URL: closing one in place (and only
    forgetting the app's reference) left a closed pool there, so every later `.delay()` to that
    broker in the session raised "Acquire on closed pool". `pools.reset()` closes and removes them."""
    from kombu import pools

    from mlportal.celery import app

    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def broker(own_redis, settings, monkeypatch):
    """The test process sends its tasks to `own_redis` (Celery reads CELERY_BROKER_URL from the
    environment before its configuration); put back afterwards."""
    settings.CELERY_BROKER_URL = own_redis.url
    monkeypatch.setenv("CELERY_BROKER_URL", own_redis.url)
    _forget_connections()
    yield own_redis
    monkeypatch.undo()
    _forget_connections()


class Workers:
    """Celery workers on the test database and `broker`, each with its log file."""

    def __init__(self, folder: Path, broker_url: str, extra_env: dict[str, str]):
        self.folder = folder
        self.env = {**worker_env(dict(connection.settings_dict)), "CELERY_BROKER_URL": broker_url, **extra_env}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, queues: str, concurrency: int, *, beat: bool = False) -> subprocess.Popen:
        argv = [sys.executable, "-m", "celery", "-A", "mlportal", "worker", "-Q", queues, "-c", str(concurrency),
                "-n", f"{name}-{os.getpid()}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        if beat:
            argv += ["--beat", "-s", str(self.folder / f"{name}-beat-schedule")]
        log = open(self.folder / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.wait_ready(name)
        return self.procs[name]

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def wait_ready(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log(name):
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{self.log(name)[-3000:]}")
            time.sleep(0.3)

    def wait(self, predicate, *, timeout: float, what: str, interval: float = 0.5):
        """wait_until that shows the workers' logs when it times out."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {name} ---\n{self.log(name)[-3000:]}" for name in self.procs)
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
            time.sleep(interval)

    def stop(self, *names: str) -> None:
        """Stops these workers (all when none is named): SIGTERM, SIGKILL after 20 s."""
        procs = [self.procs[n] for n in names] if names else list(self.procs.values())
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        self.stop()


@pytest.fixture
def workers(broker, transactional_db, tmp_path):
    """workers.start(name, queues, concurrency, beat=False) on `broker`, with quick sweeps."""
    folder = tmp_path / "workers"
    folder.mkdir()
    pool = Workers(folder, broker.url, {"MLPORTAL_REQUEUE_AFTER_SECONDS": "5", "MLPORTAL_SWEEP_INTERVAL_SECONDS": "2"})
    yield pool
    pool.stop_all()


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size_mb) -> a folder on a tmpfs of that size (unmounted afterwards); needs root."""
    mounted = []

    def make(size_mb: int) -> Path:
        folder = tmp_path / f"disk-{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            missing_part("tmpfs", f"cannot mount one here (needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def storage_on(settings):
    """storage_on(folder): Django's default storage (every stored file) goes to `folder`."""

    def point(folder: Path) -> Path:
        settings.STORAGES = {**settings.STORAGES, "default": {
            "BACKEND": "core.filestorage.PortalFileSystemStorage", "OPTIONS": {"location": str(folder)}}}
        return folder

    return point
