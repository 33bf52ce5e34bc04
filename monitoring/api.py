"""API of captured model data, drift and ground truth: actions the service viewset inherits, so
every path is ``/api/v1/services/<name or id>/…`` and resolves the service the same way (an outsider
gets 404 on each):

- ``GET data/`` rows in [since, until) as JSON, ``?output=csv`` or ``?output=parquet``;
- ``GET data/summary/`` rows per hour (48 h), dropped count, the latest rows;
- ``POST data/to-project/`` {"project", "path", "since"?, "until"?}: the rows as a project's CSV file;
- ``GET drift/`` settings, reports and the latest check; ``PATCH drift/`` settings; ``POST drift/``
  starts a check (202 + the job; the maintenance worker computes it), ``GET drift/jobs/<id>/`` its
  status, step and progress, then its report;
- ``GET ground-truth/`` accuracy or MAE per day and model version; ``POST ground-truth/`` pairs
  (JSON) or a CSV upload (multipart field ``file``).
"""
from __future__ import annotations

import csv
import datetime as dt
import io

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.response import Response

from core.errors import PortalError

from . import selectors, services
from .checks import check_moment, check_range, parse_ground_truth_csv, parse_ground_truth_json

MAX_ROWS = 100_000


def _moment(request, name: str) -> dt.datetime | None:
    return check_moment(request.query_params.get(name), name)


def _cell(value):
    return value.isoformat() if isinstance(value, dt.datetime) else value


def data_response(request, service):
    since, until = _moment(request, "since"), _moment(request, "until")
    check_range(since, until)
    raw_limit = request.query_params.get("limit") or str(MAX_ROWS)
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_ROWS:
        raise PortalError(f"limit must be a whole number from 1 to {MAX_ROWS}.", fields={"limit": "out of range"})
    fmt = request.query_params.get("output", "json")
    if fmt not in ("json", "csv", "parquet"):
        raise PortalError("output must be json, csv or parquet.", fields={"output": "json, csv or parquet"})
    table = selectors.captured_table(service, since=since, until=until)
    limit = int(raw_limit)
    if table is not None and table.num_rows > limit:
        table = table.slice(table.num_rows - limit)
    stamp = f"{service.name}-data"
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = io.BytesIO()
        pq.write_table(table if table is not None else pa.table({"request_id": pa.array([], pa.string())}), out)
        answer = HttpResponse(out.getvalue(), content_type="application/vnd.apache.parquet")
        answer["Content-Disposition"] = f'attachment; filename="{stamp}.parquet"'
        return answer
    rows = table.to_pylist() if table is not None else []
    if fmt == "csv":
        columns = table.column_names if table is not None else ["request_id", "time", "revision", "model_version", "latency_ms"]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        answer = HttpResponse(out.getvalue(), content_type="text/csv")
        answer["Content-Disposition"] = f'attachment; filename="{stamp}.csv"'
        return answer
    return Response({"count": len(rows), "results": rows})


class ServiceDataActions:
    """Mixed into the service viewset: its get_object() scopes every action to the caller's workspaces."""

    @extend_schema(parameters=[OpenApiParameter("since", str), OpenApiParameter("until", str), OpenApiParameter("limit", int),
                               OpenApiParameter("output", str, enum=["json", "csv", "parquet"])])
    @action(detail=True, methods=["get"])
    def data(self, request, **kwargs):
        """The captured rows (oldest first) in [since, until): JSON, ``?output=csv`` or ``?output=parquet``."""
        return data_response(request, self.get_object())

    @extend_schema(responses={200: dict})
    @action(detail=True, methods=["get"], url_path="data/summary")
    def data_summary(self, request, **kwargs):
        """Rows per hour over the last 48 hours, the spools' dropped count and the latest rows."""
        return Response(selectors.data_summary(self.get_object()))

    @extend_schema(request=dict, responses={201: dict})
    @action(detail=True, methods=["post"], url_path="data/to-project")
    def data_to_project(self, request, **kwargs):
        """Adds the captured rows of [since, until) to a project as a CSV data file."""
        body = request.data if isinstance(request.data, dict) else {}
        since, until = check_moment(body.get("since"), "since"), check_moment(body.get("until"), "until")
        if not body.get("project"):
            raise PortalError("Name the project to add the data file to (project).", fields={"project": "required"})
        row, count = services.data_to_project(service=self.get_object(), project_ref=str(body["project"]),
                                              path=str(body.get("path") or ""), since=since, until=until, user=request.user)
        return Response({"project": row.project.name, "path": row.path, "rows": count, "size": row.size},
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=dict, responses={200: dict})
    @action(detail=True, methods=["get", "patch", "post"])
    def drift(self, request, **kwargs):
        """GET: settings and recent reports. PATCH: change the settings ({"reference": "file", "project",
        "path"} or {"reference": "window", "window_start", "window_end"}, "current_hours",
        "feature_threshold", "share_threshold", "scheduled"). POST: start a check now (body: since?,
        until?): 202 with the job to poll (``url``); while one runs, that one."""
        service = self.get_object()
        if request.method == "PATCH":
            services.drift_settings_update(service=service, value=request.data, user=request.user)
            return Response(selectors.drift_of(service))
        if request.method == "POST":
            body = request.data if isinstance(request.data, dict) else {}
            job = services.drift_job_start(service=service, user=request.user, since=check_moment(body.get("since"), "since"),
                                           until=check_moment(body.get("until"), "until"))
            answer = Response(selectors.drift_job_as_dict(job), status=status.HTTP_202_ACCEPTED)
            answer["Location"] = answer.data["url"]
            return answer
        return Response(selectors.drift_of(service))

    @extend_schema(responses={200: dict})
    @action(detail=True, methods=["get"], url_path=r"drift/jobs/(?P<job_id>[0-9]+)", url_name="drift-job")
    def drift_job(self, request, job_id=None, **kwargs):
        """A drift check: status (queued, running, succeeded, failed), step, progress 0-1, then the
        report or what went wrong."""
        from core.errors import NotFound

        from .models import DriftJob

        job = DriftJob.objects.filter(service=self.get_object(), pk=job_id).select_related("report").first()
        if job is None:
            raise NotFound(f"This service has no drift check {job_id}.")
        return Response(selectors.drift_job_as_dict(job))

    @extend_schema(request=dict, responses={200: dict})
    @action(detail=True, methods=["get", "post"], url_path="ground-truth")
    def ground_truth(self, request, **kwargs):
        """GET: live accuracy (classification) or MAE (regression) per day and model version.
        POST: {"labels": [{"request_id", "label"}, ...]} or a CSV upload ``file`` (request_id,label)."""
        service = self.get_object()
        if request.method == "POST":
            upload = request.FILES.get("file") if hasattr(request, "FILES") else None
            if upload is not None:
                if upload.size > 20 * 1024 * 1024:
                    raise PortalError("The ground-truth file is over 20 MB; send it in parts.", fields={"file": "too large"})
                pairs = parse_ground_truth_csv(upload.read())
            else:
                pairs = parse_ground_truth_json(request.data)
            return Response(services.ground_truth_add(service=service, pairs=pairs, user=request.user))
        kind = request.query_params.get("kind") or None
        if kind not in (None, "classification", "regression"):
            raise PortalError("kind must be classification or regression (or left out: guessed from the labels).",
                              fields={"kind": "classification or regression"})
        return Response(selectors.ground_truth_report(service, kind=kind))
