"""Reads of captured model data."""
from __future__ import annotations

import datetime as dt

from .models import CaptureFile
from .worker import capture_root


def captured_rows(service, *, since: dt.datetime | None = None, until: dt.datetime | None = None, limit: int | None = None) -> list[dict]:
    """The service's stored rows, oldest first, optionally within [since, until)."""
    import pyarrow.parquet as pq

    files = CaptureFile.objects.filter(service=service)
    if since is not None:
        files = files.filter(day__gte=since.date())
    if until is not None:
        files = files.filter(day__lte=until.date())
    root = capture_root()
    rows: list[dict] = []
    for record in files.order_by("day", "created_at"):
        path = root / record.path
        if not path.exists():
            continue
        for row in pq.read_table(path).to_pylist():
            moment = row["time"]
            if (since is None or moment >= since) and (until is None or moment < until):
                rows.append(row)
    rows.sort(key=lambda r: r["time"])
    return rows[-limit:] if limit else rows
