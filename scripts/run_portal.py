"""Starts the portal's web server and Celery worker (with its beat scheduler) in the foreground.

Prints the URL, forwards Ctrl-C / SIGTERM to both, and stops both when either one exits.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def web_command(bin_dir: Path, host: str, port: str) -> list[str]:
    """The ASGI server (uvicorn) with the scoring gateway in front of Django (mlportal.asgi).

    Several worker processes share the Prometheus figures through PROMETHEUS_MULTIPROC_DIR (a
    fresh folder under the data dir); WEB_WORKERS tells the gateway how to split each service's
    concurrency limit between them."""
    workers = os.environ.setdefault("WEB_WORKERS", "2")
    if int(workers) > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import shutil

        folder = Path(os.environ.get("MLPORTAL_DATA_DIR", REPO / "data")) / "prometheus"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    command = [str(bin_dir / "uvicorn"), "mlportal.asgi:application", "--host", host, "--port", str(port),
               "--workers", workers, "--loop", "uvloop", "--http", "httptools", "--lifespan", "on",
               "--timeout-keep-alive", "30", "--no-server-header"]
    if os.environ.get("MLPORTAL_ACCESS_LOG", "1") in ("0", "false", "no"):
        command.append("--no-access-log")
    return command


def main() -> int:
    port = os.environ.get("PORT", "8000")
    host = os.environ.get("HOST", "127.0.0.1")
    bin_dir = Path(sys.executable).parent
    web = web_command(bin_dir, host, port)
    worker = [sys.executable, "-m", "celery", "-A", "mlportal", "worker", "--beat", "-Q", "runs,builds,deploy,celery",
              "-c", os.environ.get("WORKER_CONCURRENCY", "2"), "--loglevel", "INFO"]
    procs = [subprocess.Popen(cmd, cwd=REPO, start_new_session=True) for cmd in (web, worker)]
    print(f"\nMLPortal is up at http://{host}:{port}/  (data in {os.environ.get('MLPORTAL_DATA_DIR', REPO / 'data')}); Ctrl-C stops it.\n", flush=True)

    stopping = False

    def stop(*_args) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while all(proc.poll() is None for proc in procs) and not stopping:
        time.sleep(0.3)
    stop()
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    print("MLPortal stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
