"""Reads of captured model data."""
from __future__ import annotations

import datetime as dt

from .models import CaptureFile
from .worker import capture_storage


def captured_rows(service, *, since: dt.datetime | None = None, until: dt.datetime | None = None, limit: int | None = None) -> list[dict]:
    """The service's stored rows, oldest first, optionally within [since, until)."""
    import pyarrow.parquet as pq

    files = CaptureFile.objects.filter(service=service)
    if since is not None:
        files = files.filter(day__gte=since.date())
    if until is not None:
        files = files.filter(day__lte=until.date())
    storage = capture_storage()
    rows: list[dict] = []
    for record in files.order_by("day", "created_at"):
        try:
            with storage.open(record.path, "rb") as handle:
                table = pq.read_table(handle)
        except FileNotFoundError:
            continue  # recorded but not renamed yet: the next collection round finishes it
        for row in table.to_pylist():
            moment = row["time"]
            if (since is None or moment >= since) and (until is None or moment < until):
                rows.append(row)
    rows.sort(key=lambda r: r["time"])
    return rows[-limit:] if limit else rows
