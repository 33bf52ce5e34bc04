"""Metric rows of a run: written by the worker (the script's metric lines) and by the MLflow API
(runs logged from outside); read back by ``runs.selectors`` and ``runs.downsample``."""
from __future__ import annotations

import sys
import uuid
from datetime import datetime, timezone as dt_timezone

from django.db import connections, transaction
from django.utils import timezone

from runs.metric_copy import copy_text
from runs.models import Metric, RunMetricSummary

DOUBLE_MAX = sys.float_info.max  # what MLflow's SQL store keeps for ±Infinity


def run_record_metrics(*, run_id, workspace_id, points: list[dict]) -> None:
    """Stores parsed metric points ({"name", "value", "step", "time"}) and updates each name's last value.

    A float NaN is kept as MLflow keeps it (no number, the text "NaN") and ±Infinity becomes
    ±DOUBLE_MAX as in MLflow's SQL store, whichever way the point came (a run's line, the MLflow
    API); on PostgreSQL the points go
    in with one COPY of their text, built in one pass (``runs.metric_copy``: psycopg's
    ``write_row`` adapted every value in Python, most of what a 1,000-metric MLflow log-batch cost)."""
    if not points:
        return
    rows = rows_of(points)
    last: dict[str, tuple] = {}
    counts: dict[str, int] = {}
    for row in rows:
        last[row[0]] = row
        counts[row[0]] = counts.get(row[0], 0) + 1
    with transaction.atomic():
        _insert_metrics(run_id, workspace_id, rows)
        items = [(*last[name], counts[name]) for name in last]
        for start in range(0, len(items), 500):  # 9 parameters a row: stay far below SQLite's limit
            _upsert_summaries(run_id, workspace_id, items[start:start + 500])


def rows_of(points: list[dict]) -> list[tuple]:
    """(name, value, text, step, logged_at) for each point; a text value is kept as text, a point
    without a time gets now."""
    now = timezone.now()
    stamps: dict = {}
    rows = []
    for p in points:
        value, text = p.get("value"), ""
        if isinstance(value, str):
            value, text = None, value[:1000]
        elif value is not None:
            value = float(value)
            if value != value:  # NaN
                value, text = None, "NaN"
            elif value - value != 0:  # ±Infinity, clamped as MLflow's SQL store does
                value = DOUBLE_MAX if value > 0 else -DOUBLE_MAX
        when = p.get("time")
        if isinstance(when, (int, float)):
            logged_at = stamps.get(when)
            if logged_at is None:  # a batch's points mostly share a time: convert each once
                logged_at = stamps[when] = datetime.fromtimestamp(when, tz=dt_timezone.utc)
        else:
            logged_at = now
        rows.append((str(p["name"])[:200], value, text, p.get("step"), logged_at))
    return rows


def _upsert_summaries(run_id, workspace_id, items: list[tuple]) -> None:
    """One INSERT … ON CONFLICT for the (name, value, text, step, logged_at, count) of each name:
    the last value replaces the summary's, the count adds up (PostgreSQL and SQLite both speak it)."""
    connection = connections[RunMetricSummary.objects.db]
    table = connection.ops.quote_name(RunMetricSummary._meta.db_table)
    run_value = uuid.UUID(str(run_id)) if connection.vendor == "postgresql" else uuid.UUID(str(run_id)).hex
    workspace_value = uuid.UUID(str(workspace_id)) if connection.vendor == "postgresql" else uuid.UUID(str(workspace_id)).hex
    adapt = connection.ops.adapt_datetimefield_value
    params: list = []
    for name, value, text, step, logged_at, count in items:
        params += [workspace_value, run_value, name, value, text, step, count, adapt(logged_at), 0]
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(items))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (workspace_id, run_id, name, value, text, step, count, logged_at, chart_count) "
            f"VALUES {values} ON CONFLICT (run_id, name) DO UPDATE SET value = EXCLUDED.value, text = EXCLUDED.text, "
            f"step = EXCLUDED.step, logged_at = EXCLUDED.logged_at, count = {table}.count + EXCLUDED.count", params)


def _insert_metrics(run_id, workspace_id, rows: list[tuple]) -> None:
    """Inserts (name, value, text, step, logged_at) rows of one run: COPY on PostgreSQL, else bulk_create."""
    connection = connections[Metric.objects.db]
    if connection.vendor != "postgresql":
        Metric.objects.bulk_create([Metric(run_id=run_id, workspace_id=workspace_id, name=n, value=v, text=t, step=s,
                                           logged_at=at) for n, v, t, s, at in rows], batch_size=2000)
        return
    connection.ensure_connection()
    table = connection.ops.quote_name(Metric._meta.db_table)
    with connection.connection.cursor() as cursor:
        with cursor.copy(f"COPY {table} (run_id, workspace_id, name, value, text, step, logged_at) FROM STDIN") as copy:
            copy.write(copy_text(str(uuid.UUID(str(run_id))), str(uuid.UUID(str(workspace_id))), rows))
