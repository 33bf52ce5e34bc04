"""Runs at scale: the runs list, a run's page and the runs API over 10,000 runs and 1,000,000 metric points.

    .venv/bin/python benchmarks/runs_scale.py [--runs 10000] [--points-per-run 100] [--repeats 7] [--no-mlflow]

Builds a throwaway portal (a throwaway PostgreSQL database next to DATABASE_URL's when it names
one, as a team runs the portal, else SQLite under a temporary MLPORTAL_DATA_DIR; migrated from scratch) with
one workspace holding `--runs` runs of one project, each with 100 metric points: two scalars
("DTree Accuracy", "Naive Bayes Accuracy") and a 98-step "loss" series, bulk-inserted. Then, with
Django's test client as a logged-in member, it times (median of `--repeats`, after one warm-up):

* the runs list page: first page, sorted by a metric, filtered by a metric, and filtered by the
  filter language over a metric, a param and a tag (each run has params max_depth and criterion
  and a tag team, which the page shows as columns);
* a run's detail page (metrics table and the loss chart's 98 points);
* the runs API: the same three list queries.

Each is also counted in SQL queries, in this workspace and in a second one with 10 runs: the
same count in both shows the count does not grow with the data. Goal: every case under 300 ms.

The same data then goes into MLflow 3.17's SQLAlchemy tracking store (SQLite; MLflow's venv under
~/.cache/mlportal/bench-venvs/mlflow, installed once if missing; `--no-mlflow` or a failed install
skips it with a note), bulk-inserted into its tables, and the three list queries plus a run's
metric history are timed through the store itself (``search_runs``, ``get_run`` +
``get_metric_history``): no HTTP and no page rendering on MLflow's side, so the comparison favours it.

Ends with ``runs_scale list_ratio=… sorted_ratio=… filtered_ratio=… detail_ratio=…`` (ours / MLflow's
time; below 1 means faster). ``--explain`` prints the plan (PostgreSQL: EXPLAIN ANALYZE) of the
slowest query of each sorted case.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

GOAL_MS = 300.0
METRIC = "DTree Accuracy"
FILTER = 'metrics."DTree Accuracy" > 0.9 and params.max_depth = "4" and tags.team = "churn"'
TEAMS = ("churn", "fraud", "upsell")
MLFLOW_VERSION = "3.17.*"
MLFLOW_VENV = Path(os.environ.get("MLPORTAL_BENCH_VENVS", "~/.cache/mlportal/bench-venvs")).expanduser() / "mlflow"
BASE_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)


def generate(runs: int, points_per_run: int, seed: int = 42):
    """Yields (index, start, end, scalars {name: value}, series [(step, value)]) for each run: the
    same numbers for both stores. Each run has 2 scalars and points_per_run - 2 loss steps."""
    rng = random.Random(seed)
    steps = max(0, points_per_run - 2)
    for i in range(runs):
        start = BASE_TIME + timedelta(seconds=60 * i)
        end = start + timedelta(seconds=rng.randint(5, 600))
        scalars = {METRIC: rng.uniform(0.70, 0.95), "Naive Bayes Accuracy": rng.uniform(0.60, 0.80)}
        loss, series = 1.0, []
        for step in range(steps):
            loss *= rng.uniform(0.95, 1.0)
            series.append((step, loss))
        yield i, start, end, scalars, series


# --- MLPortal ------------------------------------------------------------------------------------

def setup_django(data_dir: Path, database_url: str | None = None) -> None:
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


def fill_portal(*, workspace_name: str, username: str, runs: int, points_per_run: int):
    """Creates a user owning a workspace with one project and `runs` finished runs with metrics."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from runs import services
    from runs.models import Metric, Run, RunMetricSummary, RunParam, RunTag
    from workspaces import services as ws

    user = get_user_model().objects.create_user(username=username, password="bench-password-1")
    workspace = ws.workspace_create(name=workspace_name, user=user)
    project = services.project_create(workspace=workspace, name="churn_prediction", user=user)
    services.project_file_put(project=project, path="train.py", content=b"print(1)\n", user=user)
    run_rows, summaries, params, tags = [], [], [], []
    metric_table = Metric._meta.db_table
    adapt = connection.ops.adapt_datetimefield_value
    sql = (f"INSERT INTO {metric_table} (workspace_id, run_id, name, value, text, step, logged_at) "
           "VALUES (%s, %s, %s, %s, '', %s, %s)")
    postgres = connection.vendor == "postgresql"

    def write(rows: list[tuple]) -> None:
        if not postgres:
            with connection.cursor() as cursor:
                cursor.executemany(sql, rows)
            return
        from runs.metric_copy import copy_text  # one COPY, as the worker writes points

        text = "".join(copy_text(str(uuid.UUID(r)), str(uuid.UUID(w)), [(n, v, "", st, at)])
                       for w, r, n, v, st, at in rows)
        connection.ensure_connection()
        with connection.connection.cursor() as cursor:
            with cursor.copy(f"COPY {metric_table} (run_id, workspace_id, name, value, text, step, logged_at) "
                             "FROM STDIN") as copy:
                copy.write(text)

    points = 0
    with transaction.atomic():
        batch = []
        for i, start, end, scalars, series in generate(runs, points_per_run):
            run = Run(workspace=workspace, project=project, number=i + 1, script="train.py", args=["--depth", str(i % 9)],
                      target="docker", status=Run.Status.COMPLETED, exit_code=0, image="mlportal-env:bench",
                      snapshot_sha256="0" * 64, created_by=user, started_at=start, ended_at=end, heartbeat_at=end)
            run_rows.append(run)
            params += [RunParam(workspace=workspace, run=run, name="max_depth", value=str(i % 9)),
                       RunParam(workspace=workspace, run=run, name="criterion", value=("gini", "entropy")[i % 2])]
            tags.append(RunTag(workspace=workspace, run=run, key="team", value=TEAMS[i % 3]))
            at = end if postgres else adapt(end)
            for name, value in scalars.items():
                batch.append((workspace.pk.hex, run.pk.hex, name, value, None, at))
                summaries.append(RunMetricSummary(workspace=workspace, run=run, name=name, value=value, count=1, logged_at=end))
            for step, value in series:
                batch.append((workspace.pk.hex, run.pk.hex, "loss", value, step, at))
            if series:
                summaries.append(RunMetricSummary(workspace=workspace, run=run, name="loss", value=series[-1][1],
                                                  step=series[-1][0], count=len(series), logged_at=end))
            if len(batch) >= 100_000:
                write(batch)
                points += len(batch)
                batch = []
        Run.objects.bulk_create(run_rows, batch_size=2000)
        if batch:
            write(batch)
            points += len(batch)
        RunMetricSummary.objects.bulk_create(summaries, batch_size=5000)
        RunParam.objects.bulk_create(params, batch_size=5000)
        RunTag.objects.bulk_create(tags, batch_size=5000)
    # created_at is auto_now_add: spread it like the start times so "newest first" means something.
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {Run._meta.db_table} SET created_at = started_at WHERE workspace_id = %s",
                       [workspace.pk if postgres else workspace.pk.hex])
        cursor.execute("ANALYZE")
    return user, workspace, run_rows, points


def explain(queries) -> str:
    """The plan of the slowest SELECT among captured queries (EXPLAIN ANALYZE on PostgreSQL)."""
    from django.db import connection

    selects = [q for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]
    slowest = max(selects, key=lambda q: float(q["time"]))
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN "
    with connection.cursor() as cursor:
        cursor.execute(prefix + slowest["sql"])
        plan = "\n".join("    " + " ".join(str(c) for c in row) for row in cursor.fetchall())
    return f"  {float(slowest['time']) * 1000:.1f} ms: {slowest['sql'][:600]}\n{plan}"


def time_portal(user, run_id, repeats: int, plans: bool = False) -> dict[str, dict]:
    """Times each case for `user` (whose current workspace is the one measured): median and max ms,
    queries; with ``plans``, the plan of each sorted case's slowest query."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils.http import urlencode

    client = Client()
    client.force_login(user)
    cases = {
        "list": "/runs/",
        "sorted": "/runs/?" + urlencode({"ordering": f"-metric:{METRIC}"}),
        "filtered": "/runs/?" + urlencode({"metric": METRIC, "metric_gt": "0.9"}),
        "filter": "/runs/?" + urlencode({"filter": FILTER}),
        "detail": f"/runs/{run_id}/",
        "api list": "/api/v1/runs/",
        "api sorted": "/api/v1/runs/?" + urlencode({"ordering": f"-metric:{METRIC}"}),
        "api filtered": "/api/v1/runs/?" + urlencode({"metric": METRIC, "metric_gt": "0.9"}),
        "api filter": "/api/v1/runs/?" + urlencode({"filter": FILTER}),
    }
    out = {}
    for name, url in cases.items():
        res = client.get(url)
        assert res.status_code == 200, (url, res.status_code, res.content[:300])
        times = []
        for _ in range(repeats):
            with CaptureQueriesContext(connection) as queries:
                t0 = time.perf_counter()
                res = client.get(url)
                times.append((time.perf_counter() - t0) * 1000)
        out[name] = {"median_ms": statistics.median(times), "max_ms": max(times), "queries": len(queries)}
        if plans and "sorted" in name:
            out[name]["plan"] = explain(queries.captured_queries)
    return out


# --- MLflow --------------------------------------------------------------------------------------

MLFLOW_SCRIPT = r'''
import json, statistics, sys, time, uuid
sys.path.insert(0, sys.argv[1])
from runs_scale import generate, METRIC, TEAMS
from mlflow.entities import ViewType
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
import sqlite3

db, runs, per_run, repeats = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
store = SqlAlchemyStore(f"sqlite:///{db}", db.rsplit("/", 1)[0] + "/artifacts")
experiment_id = store.create_experiment("churn_prediction")
con = sqlite3.connect(db)
run_rows, metric_rows, latest_rows, ids, param_rows, tag_rows = [], [], [], [], [], []
ms = lambda dt: int(dt.timestamp() * 1000)
for i, start, end, scalars, series in generate(runs, per_run):
    rid = uuid.uuid4().hex
    ids.append(rid)
    run_rows.append((rid, f"run-{i + 1}", "LOCAL", "train.py", "", "olivia", "FINISHED", ms(start), ms(end), "",
                     "active", f"file:///tmp/{rid}", int(experiment_id)))
    param_rows += [("max_depth", str(i % 9), rid), ("criterion", ("gini", "entropy")[i % 2], rid)]
    tag_rows.append(("team", TEAMS[i % 3], rid))
    for name, value in scalars.items():
        metric_rows.append((name, value, ms(end), rid, 0, 0))
        latest_rows.append((name, value, ms(end), 0, 0, rid))
    for step, value in series:
        metric_rows.append(("loss", value, ms(end) + step, rid, step, 0))
    if series:
        latest_rows.append(("loss", series[-1][1], ms(end) + series[-1][0], series[-1][0], 0, rid))
with con:
    con.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                    "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", run_rows)
    con.executemany('INSERT INTO metrics ("key", value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)', metric_rows)
    con.executemany('INSERT INTO latest_metrics ("key", value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)', latest_rows)
    con.executemany('INSERT INTO params ("key", value, run_uuid) VALUES (?,?,?)', param_rows)
    con.executemany('INSERT INTO tags ("key", value, run_uuid) VALUES (?,?,?)', tag_rows)
    con.execute("ANALYZE")
con.close()

def timed(fn):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(times), "max_ms": max(times)}

metric = "metrics.`" + METRIC + "`"
search = lambda **kw: store.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=25, **kw)
first = search(filter_string="", order_by=["attributes.start_time DESC"])
assert len(first) == 25, len(first)
detail_id = ids[len(ids) // 2]
out = {
    "points": len(metric_rows),
    "list": timed(lambda: search(filter_string="", order_by=["attributes.start_time DESC"])),
    "sorted": timed(lambda: search(filter_string="", order_by=[metric + " DESC"])),
    "filtered": timed(lambda: search(filter_string=metric + " > 0.9", order_by=["attributes.start_time DESC"])),
    "filter": timed(lambda: search(filter_string=metric + ' > 0.9 and params.max_depth = "4" and tags.team = "churn"',
                                   order_by=["attributes.start_time DESC"])),
    "detail": timed(lambda: (store.get_run(detail_id), store.get_metric_history(detail_id, "loss"))),
}
print(json.dumps(out))
'''


def mlflow_python() -> Path | None:
    """The MLflow venv's python, installing MLflow there once; None (with a note) when it cannot be had."""
    python = MLFLOW_VENV / "bin" / "python"
    check = [str(python), "-c", "import mlflow; print(mlflow.__version__)"]
    if python.exists():
        done = subprocess.run(check, capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip().startswith(MLFLOW_VERSION.rstrip("*")):
            return python
    common.log(f"installing mlflow {MLFLOW_VERSION} into {MLFLOW_VENV} (once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"mlflow=={MLFLOW_VERSION}"], check=True,
                       capture_output=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"note: MLflow skipped: it could not be installed ({exc}); no ratios against it.")
        return None
    return python


def time_mlflow(runs: int, per_run: int, repeats: int) -> dict | None:
    python = mlflow_python()
    if python is None:
        return None
    with tempfile.TemporaryDirectory(prefix="mlflow-scale-") as tmp:
        script = Path(tmp) / "bench_mlflow.py"
        script.write_text(MLFLOW_SCRIPT)
        done = subprocess.run([str(python), str(script), str(Path(__file__).resolve().parent), f"{tmp}/mlflow.db",
                               str(runs), str(per_run), str(repeats)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        print(f"note: MLflow part failed; no ratios against it:\n{done.stderr[-2000:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- main ----------------------------------------------------------------------------------------

def measure_portal(data_dir: Path, database_url: str | None, args):
    common.log(f"building a portal under {data_dir} on {'PostgreSQL' if database_url else 'SQLite'} "
               f"(load average {common.loadavg()})")
    setup_django(data_dir, database_url)
    t0 = time.perf_counter()
    user, workspace, runs, points = fill_portal(workspace_name="scale", username="olivia", runs=args.runs,
                                                points_per_run=args.points_per_run)
    common.log(f"inserted {len(runs)} runs and {points} metric points in {time.perf_counter() - t0:.1f} s")
    small_user, _, small_runs, _ = fill_portal(workspace_name="small", username="sam", runs=10,
                                               points_per_run=args.points_per_run)
    ours = time_portal(user, runs[len(runs) // 2].pk, args.repeats, plans=args.explain)
    small = time_portal(small_user, small_runs[5].pk, 2)
    return ours, small, runs, points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--points-per-run", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--explain", action="store_true", help="print the plan of each sorted case's slowest query")
    args = parser.parse_args()
    import ingestion

    with tempfile.TemporaryDirectory(prefix="mlportal-scale-") as data_dir:
        database_url, drop = ingestion.make_database(Path(data_dir))
        try:
            ours, small, runs, points = measure_portal(Path(data_dir), database_url, args)
        finally:
            drop()
    engine = "PostgreSQL" if database_url else "SQLite"
    print(f"runs_scale: {len(runs)} runs, {points} metric points ({engine}), median of {args.repeats}, "
          f"load average {common.loadavg()}")
    for name, row in ours.items():
        if "plan" in row:
            print(f"plan of the slowest query of '{name}':\n{row['plan']}")
    print(f"{'case':<14} {'median ms':>10} {'max ms':>8} {'queries':>8} {'queries@10 runs':>16}  goal <{GOAL_MS:g} ms")
    missed = []
    for name, row in ours.items():
        ok = row["median_ms"] < GOAL_MS
        same = row["queries"] == small[name]["queries"]
        if not ok:
            missed.append(name)
        print(f"{name:<14} {row['median_ms']:>10.1f} {row['max_ms']:>8.1f} {row['queries']:>8} "
              f"{small[name]['queries']:>16}  {'met' if ok else 'MISSED'}{'' if same else ' (query count grows!)'}")
    print(f"  goal: every case under {GOAL_MS:g} ms with a constant query count: "
          f"{'met' if not missed and all(ours[n]['queries'] == small[n]['queries'] for n in ours) else 'MISSED'}")

    if args.no_mlflow:
        print("note: MLflow skipped (--no-mlflow); no ratios against it.")
        return 0
    theirs = time_mlflow(args.runs, args.points_per_run, args.repeats)
    if theirs is None:
        return 0
    print(f"MLflow {MLFLOW_VERSION} SqlAlchemyStore (SQLite), {theirs['points']} metric points, store calls only:")
    for name in ("list", "sorted", "filtered", "filter", "detail"):
        print(f"{name:<14} {theirs[name]['median_ms']:>10.1f} {theirs[name]['max_ms']:>8.1f}")
    ratios = {f"{name}_ratio": common.ratio(ours[name]["median_ms"], theirs[name]["median_ms"])
              for name in ("list", "sorted", "filtered", "filter", "detail")}
    ratios |= {f"api_{name}_ratio": common.ratio(ours[f"api {name}"]["median_ms"], theirs[name]["median_ms"])
               for name in ("list", "sorted", "filtered", "filter")}
    print(common.ratio_line("runs_scale", **ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
