"""The whole chart answer of a finished run, made once and kept gzipped (`RunChartCache`).

The metrics tab asks for every series of a run at the default size. For a finished run that
answer only changes when more points arrive, so it is encoded and compressed once — by the worker
when the run ends (`runs.worker.prepare_charts`), else by the first request — and then each visit
reads one row and sends its bytes: no JSON decoding of ten series, no encoding, no gzip. The run
page carries the same answer in a data block (``whole_series_data_block``), so its metrics tab
draws without a second request.
"""
from __future__ import annotations

import gzip
import json

from django.db.models import Count, Sum

from runs import selectors
from runs.models import Run, RunChartCache, RunMetricSummary


def _key(run: Run) -> str:
    """'<series>:<points>' of the run's stepped series: points only ever add up, so any new one changes it."""
    totals = RunMetricSummary.objects.filter(run=run, step__isnull=False).aggregate(series=Count("id"), points=Sum("count"))
    return f"{totals['series']}:{totals['points'] or 0}"


def encode(data: dict, *, level: int = 6) -> bytes:
    """The chart answer as compact JSON, gzipped (``level`` 6: made once, read many times)."""
    return gzip.compress(json.dumps(data, separators=(",", ":"), allow_nan=False).encode(), compresslevel=level)


def whole_series_gzip(run: Run) -> bytes:
    """The gzipped body of ``GET /api/v1/runs/<id>/series/`` (every series, default size) for a
    finished run: the kept one while it is current, else made now and kept."""
    key = _key(run)
    kept = RunChartCache.objects.filter(run=run).values_list("key", "body").first()
    if kept is not None and kept[0] == key:
        return bytes(kept[1])
    data = {"series": selectors.chart_series(run), "min_step": None, "max_step": None, "points": selectors.CHART_POINTS}
    body = encode(data)
    RunChartCache.objects.update_or_create(run=run, defaults={"workspace_id": run.workspace_id, "key": key, "body": body})
    return body


# What could end a <script type="application/json"> element or open a comment inside it: in JSON
# they can only sit inside strings (series names), where the \u escape reads back the same.
_BLOCK_ESCAPES = ((b"&", b"\\u0026"), (b"<", b"\\u003c"), (b">", b"\\u003e"))


# Above this (gzipped) the page does not carry the answer: a run of hundreds of series would make
# every visit of its page unpack and gzip megabytes; its chart fetches the kept answer instead.
PAGE_DATA_MAX_GZIP_BYTES = 200 * 1024


def whole_series_data_block(run: Run) -> str:
    """The kept answer of ``whole_series_gzip`` as JSON text safe inside a ``<script
    type="application/json">`` element (what Django's json_script writes, without decoding and
    encoding the ten series again); "" when it is over PAGE_DATA_MAX_GZIP_BYTES."""
    body = whole_series_gzip(run)
    if len(body) > PAGE_DATA_MAX_GZIP_BYTES:
        return ""
    text = gzip.decompress(body)
    for raw, escaped in _BLOCK_ESCAPES:
        text = text.replace(raw, escaped)
    return text.decode("ascii")
