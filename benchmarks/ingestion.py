"""Metric ingestion: 1,000,000 points, three ways, points per second end to end.

    .venv/bin/python benchmarks/ingestion.py [--points 1000000] [--series 10] [--only a,b,c]

* **(a) a portal run through the runtime.** A Docker run (target docker, the environment image
  with no requirements, built first and untimed) whose script logs the points with
  ``get_logger().log_metrics({...10 series...}, step=i)``: one structured stdout line per step,
  streamed by the engine, parsed by the worker's sink and written in batches of 20,000 (COPY on
  PostgreSQL). Timed from submit to the run recorded completed with every point stored. The
  worker is this process (``runs.worker.execute``, what the Celery task calls), so its memory is
  sampled meanwhile (VmRSS every 0.1 s): the sink holds at most 40,000 unwritten points and makes
  the script wait beyond that, so the peak stays flat however many points arrive.
* **(b) the stock MLflow client against the portal's MLflow API**: ``MlflowClient.log_batch`` with
  1,000 metrics per call (MLflow's limit), 1,000 calls, against the portal served by gunicorn
  (2 workers, like ``make run``), the portal's bearer token in ``MLFLOW_TRACKING_TOKEN``.
* **(c) the same client against ``mlflow server``** on SQLite (MLflow 3.17 in its own venv under
  ~/.cache/mlportal/bench-venvs/mlflow, installed once if missing), its default workers.

The portal side uses PostgreSQL when DATABASE_URL names one (a throwaway database made next to
it and dropped after), else SQLite in a temporary folder. Goals: (a) ≥ 10× (c), (b) ≥ 3× (c).
Ends with ``ingestion runtime_ratio=… mlflow_api_ratio=…`` (ours / MLflow server's points/s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
import runs_scale  # noqa: E402  (its MLflow venv)

REPO = Path(__file__).resolve().parents[1]
RUNTIME_GOAL = 10.0
API_GOAL = 3.0

SCRIPT = """import sys
from mlportal_runtime import get_logger
log = get_logger()
points, series = int(sys.argv[1]), int(sys.argv[2])
names = [f"m{s}" for s in range(series)]
for step in range(points // series):
    log.log_metrics({name: step * 0.001 + i for i, name in enumerate(names)}, step=step)
print("done", flush=True)
"""

CLIENT = r"""
import json, os, sys, time
from mlflow import MlflowClient
from mlflow.entities import Metric
points, series, experiment = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
client = MlflowClient()
found = client.get_experiment_by_name(experiment)
experiment_id = found.experiment_id if found else client.create_experiment(experiment)
t0 = time.perf_counter()
run = client.create_run(experiment_id)
run_id = run.info.run_id
steps_per_batch = 1000 // series
for first in range(0, points // series, steps_per_batch):
    now = int(time.time() * 1000)
    batch = [Metric(f"m{s}", step * 0.001 + s, now, step) for step in range(first, first + steps_per_batch) for s in range(series)]
    client.log_batch(run_id, metrics=batch)
client.set_terminated(run_id)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "run_id": run_id}))
"""


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Samples this process's resident memory every 0.1 s while in the with block."""

    def __enter__(self):
        self.base = rss_kb()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_kb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --- the portal's database and process -----------------------------------------------------------

def make_database(data_dir: Path) -> tuple[str | None, callable]:
    """(DATABASE_URL for the portal or None for SQLite, cleanup)."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        return None, lambda: None
    import psycopg

    base = url.rsplit("/", 1)
    name = f"{base[1].split('?')[0]}_ingest_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop():
        from django.db import connections

        connections.close_all()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base[0]}/{name}", drop


def setup_django(data_dir: Path, database_url: str | None) -> None:
    os.environ["MLPORTAL_DATA_DIR"] = str(data_dir)
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    else:
        os.environ.pop("DATABASE_URL", None)
    os.environ["CELERY_BROKER_URL"] = "filesystem://"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlportal.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_owner():
    from django.contrib.auth import get_user_model

    from runs import services
    from workspaces import services as ws

    user = get_user_model().objects.create_user(username="olivia", password="bench-password-1")
    workspace = ws.workspace_create(name="ingest", user=user)
    project = services.project_create(workspace=workspace, name="ingest", user=user)
    services.project_file_put(project=project, path="log_points.py", content=SCRIPT.encode(), user=user)
    _, token = ws.token_create(user=user, name="bench")
    return user, project, token


def count_points(run_id) -> int:
    from runs.models import Metric

    return Metric.objects.filter(run_id=run_id).count()


# --- (a) ------------------------------------------------------------------------------------------

def bench_runtime(user, project, points: int, series: int) -> dict:
    from django.conf import settings

    from compute.envimage import ensure_env_image
    from runs import services, worker

    common.log("(a) preparing the environment image (untimed)")
    ensure_env_image(base_image=settings.MLPORTAL_BASE_IMAGE, requirements=[], wheel_cache=settings.MLPORTAL_WHEEL_CACHE,
                     log=common.quiet, base_url=settings.MLPORTAL_DOCKER_URL)
    common.log(f"(a) a docker run logging {points} points through the runtime")
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        run = services.run_submit(project=project, script="log_points.py", args=[str(points), str(series)],
                                  target="docker", user=user)
        status = worker.execute(run.id)
        seconds = time.perf_counter() - t0
    stored = count_points(run.id)
    if status != "completed" or stored != points:
        raise SystemExit(f"(a) the run ended {status} with {stored} of {points} points")
    return {"seconds": seconds, "points": stored, "rss_base_mb": memory.base / 1024, "rss_peak_mb": memory.peak / 1024}


# --- (b) and (c) -------------------------------------------------------------------------------------

def run_client(uri: str, token: str | None, points: int, series: int, experiment: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}  # the stock client's own retries and timeouts
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if token:
        env["MLFLOW_TRACKING_TOKEN"] = token
    done = subprocess.run([sys.executable, "-c", CLIENT, str(points), str(series), experiment], env=env,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"the MLflow client failed against {uri}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def start(cmd: list[str], env: dict, port: int, path: str) -> subprocess.Popen:
    # MLflow's server imports for a long while on a busy machine (its workers, one by one).
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        common.wait_http("127.0.0.1", port, path, timeout_s=600, alive=lambda: proc.poll() is None)
    except BaseException:
        stop(proc)  # never leave a server behind
        raise
    time.sleep(15)  # the first worker answers; give the others (MLflow's server starts four) time to come up
    return proc


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def bench_portal_api(data_dir: Path, database_url: str | None, token: str, points: int, series: int) -> dict:
    port = common.free_port()
    env = {**os.environ, "MLPORTAL_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "mlportal.settings"}
    if database_url:
        env["DATABASE_URL"] = database_url
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    proc = start([gunicorn, "mlportal.wsgi:application", "-w", "2", "-b", f"127.0.0.1:{port}", "--chdir", str(REPO)],
                 env, port, "/mlflow/version")
    try:
        common.log(f"(b) the MLflow client, log_batch × {points // 1000}, against the portal's MLflow API")
        out = run_client(f"http://127.0.0.1:{port}/mlflow", token, points, series, "ingest")
    finally:
        stop(proc)
    out["points"] = count_points(out["run_id"])
    if out["points"] != points:
        raise SystemExit(f"(b) stored {out['points']} of {points} points")
    return out


def bench_mlflow_server(points: int, series: int) -> dict | None:
    python = runs_scale.mlflow_python()
    if python is None:
        return None
    work = Path(tempfile.mkdtemp(prefix="mlflow-ingest-"))
    port = common.free_port()
    mlflow = str(python.parent / "mlflow")
    try:
        # Its schema first: several server workers creating it at once break one another.
        subprocess.run([mlflow, "db", "upgrade", f"sqlite:///{work}/mlflow.db"], env={**os.environ, "HOME": str(work)},
                       check=True, capture_output=True, timeout=600)
        proc = start([mlflow, "server", "--backend-store-uri", f"sqlite:///{work}/mlflow.db", "--default-artifact-root",
                      str(work / "artifacts"), "--host", "127.0.0.1", "--port", str(port)],
                     {**os.environ, "HOME": str(work)}, port, "/health")
        try:
            common.log(f"(c) the same client against mlflow server (SQLite) on port {port}")
            out = run_client(f"http://127.0.0.1:{port}", None, points, series, "ingest")
        finally:
            stop(proc)
        import sqlite3

        with sqlite3.connect(work / "mlflow.db") as con:
            out["points"] = con.execute("SELECT count(*) FROM metrics WHERE run_uuid = ?", (out["run_id"],)).fetchone()[0]
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


LABELS = {"a": "(a) portal run through the runtime", "b": "(b) MLflow client → portal MLflow API",
          "c": "(c) MLflow client → mlflow server (SQLite)"}


def _say(key: str, result: dict) -> None:
    print(f"measured {LABELS[key]}: {result['points']} points in {result['seconds']:.1f} s = "
          f"{result['points'] / result['seconds']:,.0f} points/s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--only", default="a,b,c")
    args = parser.parse_args()
    only = set(args.only.split(","))
    data_dir = Path(tempfile.mkdtemp(prefix="mlportal-ingest-"))
    results: dict[str, dict | None] = {}
    database_url, drop = make_database(data_dir)
    try:
        common.log(f"portal under {data_dir} on {'PostgreSQL' if database_url else 'SQLite'} (load average {common.loadavg()})")
        setup_django(data_dir, database_url)
        user, project, token = make_owner()
        # Each figure is printed as soon as it is measured, so a later failure keeps the earlier ones.
        if "a" in only:
            results["a"] = bench_runtime(user, project, args.points, args.series)
            _say("a", results["a"])
        if "b" in only:
            results["b"] = bench_portal_api(data_dir, database_url, token, args.points, args.series)
            _say("b", results["b"])
        if "c" in only:
            results["c"] = bench_mlflow_server(args.points, args.series)
            if results["c"]:
                _say("c", results["c"])
    finally:
        drop()
        shutil.rmtree(data_dir, ignore_errors=True)

    print(f"ingestion: {args.points} points in {args.series} series, end to end "
          f"(portal on {'PostgreSQL' if database_url else 'SQLite'}; load average {common.loadavg()})")
    rate = {k: v["points"] / v["seconds"] for k, v in results.items() if v}
    labels = LABELS
    for key in ("a", "b", "c"):
        if results.get(key):
            r = results[key]
            print(f"  {labels[key]:<44} {r['seconds']:8.1f} s  {rate[key]:>10,.0f} points/s")
    if results.get("a"):
        a = results["a"]
        print(f"  worker memory while (a) ingested: {a['rss_base_mb']:.0f} MB before, peak {a['rss_peak_mb']:.0f} MB "
              f"(+{a['rss_peak_mb'] - a['rss_base_mb']:.0f} MB)")
    if "c" not in rate:
        print("note: no MLflow server figure; no ratios.")
        return 0
    ratios = {}
    if "a" in rate:
        ratios["runtime_ratio"] = rate["a"] / rate["c"]
        print(f"  goal (a) ≥ {RUNTIME_GOAL:g}× (c): {'met' if ratios['runtime_ratio'] >= RUNTIME_GOAL else 'MISSED'}")
    if "b" in rate:
        ratios["mlflow_api_ratio"] = rate["b"] / rate["c"]
        print(f"  goal (b) ≥ {API_GOAL:g}× (c): {'met' if ratios['mlflow_api_ratio'] >= API_GOAL else 'MISSED'}")
    print(common.ratio_line("ingestion", **ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
