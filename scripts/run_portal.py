"""Starts the portal in the foreground and supervises it: the web server, a worker for runs, and a
maintenance worker (image builds, deploys, sweeps, reconcile, retention, with the beat scheduler),
so that a long training run never holds up a build, a deploy or the repair of a dead service.

A child that dies is started again after a back-off (1 s, doubling up to 30 s; back to 1 s once it
has stayed up a minute), with a line in the output. Ctrl-C / SIGTERM stops every child: SIGTERM
first, SIGKILL for what is still there after MLPORTAL_STOP_GRACE seconds (default 5), so the
terminal is back within a few seconds even while runs are executing (their runs are then swept
as lost, the same as after a power cut).

The process list is `children()`: one `Child` per program, easy to extend.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a child that stayed up this long starts its next back-off from the first step


def say(line: str) -> None:
    print(f"[portal] {line}", flush=True)


@dataclass
class Child:
    """One supervised program: `name` is what the output calls it."""

    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_FIRST_S
    restart_at: float | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        env = {**os.environ, **self.env}
        # A session of its own: Ctrl-C in the terminal reaches the supervisor only, which then
        # stops each child's whole process group (uvicorn's and Celery's own children too).
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=env, start_new_session=True)
        self.started_at = time.monotonic()
        self.restart_at = None
        say(f"started {self.name} (pid {self.proc.pid})")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, signum: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass


def web_command(bin_dir: Path, host: str, port: str) -> list[str]:
    """The ASGI server (uvicorn) with the scoring gateway in front of Django (mlportal.asgi).

    Several worker processes share the Prometheus figures through PROMETHEUS_MULTIPROC_DIR (a
    fresh folder under the data dir); each service's concurrency limit holds across them
    (gateway/slots.py)."""
    workers = os.environ.setdefault("WEB_WORKERS", "2")
    if int(workers) > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import shutil

        folder = Path(os.environ.get("MLPORTAL_DATA_DIR", REPO / "data")) / "prometheus"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    command = [str(bin_dir / "uvicorn"), "mlportal.asgi:application", "--host", host, "--port", str(port),
               "--workers", workers, "--loop", "uvloop", "--http", "gateway.server:GatewayHttpProtocol", "--lifespan", "on",
               "--timeout-keep-alive", "30", "--no-server-header"]
    if os.environ.get("MLPORTAL_ACCESS_LOG", "1") in ("0", "false", "no"):
        command.append("--no-access-log")
    return command


def children() -> list[Child]:
    """What `make run` starts. Each entry is one program; add one here to supervise it too."""
    port = os.environ.get("PORT", "8000")
    host = os.environ.get("HOST", "127.0.0.1")
    bin_dir = Path(sys.executable).parent
    celery = [sys.executable, "-m", "celery", "-A", "mlportal", "worker", "--loglevel", "INFO"]
    return [
        Child("web", web_command(bin_dir, host, port)),
        Child("runs worker", [*celery, "-Q", "runs", "-n", "runs@%h",
                              "-c", os.environ.get("WORKER_CONCURRENCY", "2")]),
        # Its own slots: builds, deploys and the periodic sweeps never queue behind training runs.
        Child("maintenance worker", [*celery, "--beat", "-Q", "builds,deploy,celery", "-n", "maintenance@%h",
                                     "-c", os.environ.get("MAINTENANCE_CONCURRENCY", "2")]),
    ]


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds, not {raw!r}") from None


def supervise(procs: list[Child], *, poll_s: float = 0.2) -> int:
    """Keeps every child running until SIGINT/SIGTERM, then stops them all; returns the exit code."""
    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        if not stopping:
            say(f"{signal.Signals(signum).name}: stopping")
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for child in procs:
        child.start()
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "8000")
    print(f"\nMLPortal is up at http://{host}:{port}/  (data in {os.environ.get('MLPORTAL_DATA_DIR', REPO / 'data')}); "
          "Ctrl-C stops it.\n", flush=True)
    while not stopping:
        now = time.monotonic()
        for child in procs:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    child.start()
                continue
            if child.alive():
                continue
            code = child.proc.returncode if child.proc else None
            if now - child.started_at >= STABLE_AFTER_S:
                child.backoff_s = BACKOFF_FIRST_S
            say(f"{child.name} (pid {child.proc.pid if child.proc else '?'}) exited with code {code}; "
                f"restarting it in {child.backoff_s:g} s")
            child.restart_at = now + child.backoff_s
            child.backoff_s = min(BACKOFF_MAX_S, child.backoff_s * 2)
        time.sleep(poll_s)
    _stop_all(procs, grace_s=_float_env("MLPORTAL_STOP_GRACE", 5.0))
    print("MLPortal stopped.", flush=True)
    return 0


def _stop_all(procs: list[Child], *, grace_s: float) -> None:
    for child in procs:
        if child.alive():
            child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in procs:
        if child.proc is None:
            continue
        try:
            child.proc.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{child.name} did not stop within {grace_s:g} s; killing it")
        # The leader may be gone while its children (gunicorn workers, Celery pool) are not.
        child.signal_group(signal.SIGKILL)
        if child.alive():
            child.proc.wait(timeout=5)


def main() -> int:
    return supervise(children())


if __name__ == "__main__":
    sys.exit(main())
