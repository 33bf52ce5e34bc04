"""API of captured model data (mounted on the service viewset: GET services/<ref>/data/)."""
from __future__ import annotations

import csv
import datetime as dt
import io

from django.http import HttpResponse
from rest_framework.response import Response

from core.errors import PortalError

from .selectors import captured_rows

MAX_ROWS = 100_000


def _moment(request, name: str) -> dt.datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise PortalError(f"{name} must be an ISO date or time such as 2026-12-01 or 2026-12-01T15:00Z.",
                          fields={name: "not an ISO date/time"}) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def data_response(request, service):
    since, until = _moment(request, "since"), _moment(request, "until")
    if since and until and since >= until:
        raise PortalError("since must be before until (the time range is reversed or empty).", fields={"until": "must be after since"})
    raw_limit = request.query_params.get("limit") or str(MAX_ROWS)
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_ROWS:
        raise PortalError(f"limit must be a whole number from 1 to {MAX_ROWS}.", fields={"limit": "out of range"})
    fmt = request.query_params.get("output", "json")
    if fmt not in ("json", "csv"):
        raise PortalError("output must be json or csv.", fields={"output": "json or csv"})
    rows = captured_rows(service, since=since, until=until, limit=int(raw_limit))
    if fmt == "csv":
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()})
        answer = HttpResponse(out.getvalue(), content_type="text/csv")
        answer["Content-Disposition"] = f'attachment; filename="{service.name}-data.csv"'
        return answer
    return Response({"count": len(rows), "results": rows})
