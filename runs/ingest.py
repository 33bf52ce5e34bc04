"""Storing metric points fast: the rows of a batch, one COPY of their text on PostgreSQL, and one
upsert of each name's summary.

``record_points`` does what ``runs.services.run_record_metrics`` does (and is what it is meant to
call once the services move to their new rooms): a float NaN is kept as MLflow keeps it (no
number, the text "NaN"), a text value is kept as text, a point without a time gets now. On
PostgreSQL the rows go as COPY text built in one pass (``runs.metric_copy``) instead of psycopg
adapting each value; elsewhere through ``bulk_create``.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone as dt_timezone

from django.db import connections, transaction
from django.utils import timezone

from runs.metric_copy import copy_text
from runs.models import Metric

SUMMARY_CHUNK = 500  # 9 parameters a summary row: stay far below SQLite's limit


def rows_of(points: list[dict]) -> list[tuple]:
    """(name, value, text, step, logged_at) for each point ({"name", "value", "step", "time"})."""
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
        when = p.get("time")
        if isinstance(when, (int, float)):
            logged_at = stamps.get(when)
            if logged_at is None:  # a batch's points mostly share a time: convert each once
                logged_at = stamps[when] = datetime.fromtimestamp(when, tz=dt_timezone.utc)
        else:
            logged_at = now
        rows.append((str(p["name"])[:200], value, text, p.get("step"), logged_at))
    return rows


def record_points(*, run_id, workspace_id, points: list[dict]) -> None:
    """Stores the points and updates each name's last value and count, in one transaction."""
    from runs.metrics import _upsert_summaries  # the one upsert of the summaries

    if not points:
        return
    rows = rows_of(points)
    last: dict[str, tuple] = {}
    counts: dict[str, int] = {}
    for row in rows:
        last[row[0]] = row
        counts[row[0]] = counts.get(row[0], 0) + 1
    with transaction.atomic():
        insert_rows(run_id, workspace_id, rows)
        items = [(*last[name], counts[name]) for name in last]
        for start in range(0, len(items), SUMMARY_CHUNK):
            _upsert_summaries(run_id, workspace_id, items[start:start + SUMMARY_CHUNK])


def insert_rows(run_id, workspace_id, rows: list[tuple]) -> None:
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
