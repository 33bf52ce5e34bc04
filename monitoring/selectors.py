"""Reads of captured model data: rows, a pandas frame of them, hourly counts, drift, ground truth."""
from __future__ import annotations

import datetime as dt
import json

from django.utils import timezone

from .models import Capture, CaptureFile, DriftJob, DriftReport, DriftSettings, GroundTruth
from .store import capture_storage

LATEST_ROWS = 20


def _files(service, since: dt.datetime | None, until: dt.datetime | None):
    files = CaptureFile.objects.filter(service=service)
    if since is not None:
        files = files.filter(day__gte=since.astimezone(dt.timezone.utc).date())
    if until is not None:
        files = files.filter(day__lte=until.astimezone(dt.timezone.utc).date())
    storage = capture_storage()
    for record in files.order_by("day", "created_at"):
        try:
            with storage.open(record.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            continue  # recorded but not renamed yet: the next collection round finishes it
        yield data


def captured_table(service, *, since: dt.datetime | None = None, until: dt.datetime | None = None, columns: list[str] | None = None):
    """The service's stored rows in [since, until) as one pyarrow Table, oldest first (columns the
    union over files, missing cells null); None when nothing is stored there."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tables = []
    for data in _files(service, since, until):
        table = pq.read_table(pa.BufferReader(data))
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        if since is not None:
            table = table.filter(pc.greater_equal(table["time"], pa.scalar(since, type=table["time"].type)))
        if until is not None:
            table = table.filter(pc.less(table["time"], pa.scalar(until, type=table["time"].type)))
        if table.num_rows:
            tables.append(table)
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="permissive")
    # Arrow's sort is stable: rows of one time (the records of a batch) keep their stored order.
    return table.sort_by([("time", "ascending")])


def captured_rows(service, *, since: dt.datetime | None = None, until: dt.datetime | None = None, limit: int | None = None) -> list[dict]:
    """The service's stored rows, oldest first, optionally within [since, until); ``limit``: the newest N."""
    table = captured_table(service, since=since, until=until)
    if table is None:
        return []
    if limit and table.num_rows > limit:
        table = table.slice(table.num_rows - limit)
    return table.to_pylist()


def captured_frame(service, *, since=None, until=None):
    """The rows as a pandas DataFrame (empty when none)."""
    import pandas as pd

    table = captured_table(service, since=since, until=until)
    return pd.DataFrame() if table is None else table.to_pandas()


def input_features(columns) -> dict[str, str]:
    """{feature name: stored column}: the schema's input fields (``in_<f>``), or else what score.py
    collected as ``inputs.<f>``."""
    found = {c[3:]: c for c in columns if c.startswith("in_")}
    if not found:
        found = {c[len("inputs."):]: c for c in columns if c.startswith("inputs.")}
    return found


def data_summary(service, *, hours: int = 48) -> dict:
    """Rows per hour of the last ``hours`` hours, dropped count, totals and the latest rows."""
    now = timezone.now()
    start = (now - dt.timedelta(hours=hours - 1)).replace(minute=0, second=0, microsecond=0)
    table = captured_table(service, since=start)
    per_hour = {start + dt.timedelta(hours=i): 0 for i in range(hours)}
    latest: list[dict] = []
    columns: list[str] = []
    if table is not None:
        for moment in table["time"].to_pylist():
            hour = moment.replace(minute=0, second=0, microsecond=0)
            if hour in per_hour:
                per_hour[hour] += 1
        tail = table.slice(max(0, table.num_rows - LATEST_ROWS))
        columns = tail.column_names
        latest = [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()}
                  for row in reversed(tail.to_pylist())]
    capture = Capture.objects.filter(service=service).first()
    files = CaptureFile.objects.filter(service=service)
    return {
        "hours": [{"hour": hour.isoformat(), "rows": n} for hour, n in per_hour.items()],
        "total_rows": sum(files.values_list("rows", flat=True)),
        "days": sorted({d.isoformat() for d in files.values_list("day", flat=True)}),
        "dropped": capture.dropped if capture else 0,
        "last_collected_at": capture.last_collected_at.isoformat() if capture and capture.last_collected_at else None,
        "mode": capture.mode if capture else "off",
        "percent": capture.percent if capture else 100.0,
        "columns": columns,
        "latest": latest,
    }


def drift_settings_of(service) -> dict:
    settings = DriftSettings.objects.filter(service=service).select_related("project").first()
    if settings is None:
        settings = DriftSettings(service=service)
    return {
        "reference": settings.reference,
        "project": settings.project.name if settings.project_id else None,
        "path": settings.path or None,
        "window_start": settings.window_start.isoformat() if settings.window_start else None,
        "window_end": settings.window_end.isoformat() if settings.window_end else None,
        "current_hours": settings.current_hours,
        "feature_threshold": settings.feature_threshold,
        "share_threshold": settings.share_threshold,
        "scheduled": settings.scheduled,
        "configured": settings.pk is not None and DriftSettings.objects.filter(pk=settings.pk).exists(),
    }


def report_as_dict(report: DriftReport, *, histograms: bool = True) -> dict:
    return {
        "id": report.pk,
        "computed_at": report.computed_at.isoformat(),
        "trigger": report.trigger,
        "reference": report.reference,
        "current_from": report.current_from.isoformat(),
        "current_to": report.current_to.isoformat(),
        "reference_rows": report.reference_rows,
        "current_rows": report.current_rows,
        "share_drifted": report.share_drifted,
        "drifted": report.drifted,
        "drifted_features": [f["name"] for f in report.features if f.get("drifted")],
        "features": report.features if histograms else [{k: v for k, v in f.items() if k != "histogram"} for f in report.features],
    }


def drift_job_as_dict(job: DriftJob, *, report: bool = True) -> dict:
    """A drift job as the page and the CLI poll it: status, step, progress 0-1, how long ago the
    worker last said so, the error (failed) or the report (succeeded)."""
    from django.urls import reverse

    now = timezone.now()
    return {
        "id": job.pk,
        "status": job.status,
        "done": job.status not in DriftJob.OPEN,
        "step": job.step,
        "progress": job.progress,
        "error": job.error or None,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "seconds_since_heard": round((now - job.heartbeat_at).total_seconds(), 1),
        "url": reverse("api-service-drift-job", kwargs={"pk": str(job.service_id), "job_id": job.pk}),
        "report": report_as_dict(job.report) if report and job.report_id else None,
    }


def drift_of(service) -> dict:
    reports = list(DriftReport.objects.filter(service=service)[:20])
    job = DriftJob.objects.filter(service=service).select_related("report").first()
    return {
        "settings": drift_settings_of(service),
        "job": drift_job_as_dict(job, report=False) if job is not None else None,
        "latest": report_as_dict(reports[0]) if reports else None,
        "reports": [{"id": r.pk, "computed_at": r.computed_at.isoformat(), "trigger": r.trigger,
                     "share_drifted": r.share_drifted, "drifted": r.drifted} for r in reports],
    }


def _prediction_value(text):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return text
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def ground_truth_report(service, *, kind: str | None = None) -> dict:
    """Ground truth joined with the captured predictions by request id: per day and model version,
    accuracy (classification) or mean absolute error (regression).

    ``kind`` None guesses: regression when every label and joined prediction is a number and
    either one is not a whole number or there are more than 20 distinct labels; classification
    otherwise. A prediction is right (classification) when it and the label are the same number,
    or the same text.
    """
    labels = dict(GroundTruth.objects.filter(service=service).values_list("request_id", "label"))
    out = {"labels": len(labels), "joined": 0, "kind": None, "metric": None, "overall": None, "by_day": []}
    if not labels:
        return out
    table = captured_table(service, columns=["request_id", "time", "model_version", "prediction"])
    pairs = []  # (day, model version, prediction, label)
    if table is not None and "prediction" in table.column_names:
        for row in table.to_pylist():
            label = labels.get(row["request_id"])
            if label is not None and row.get("prediction") is not None:
                pairs.append((row["time"].date().isoformat(), row["model_version"] or "", _prediction_value(row["prediction"]), label))
    if kind is None:
        numbers = [_number(v) for v in labels.values()] + [_number(p) for _, _, p, _ in pairs]
        regression = all(n is not None for n in numbers) and (
            any(n != int(n) for n in numbers) or len({_number(v) for v in labels.values()}) > 20)
    else:
        regression = kind == "regression"
    out["kind"] = "regression" if regression else "classification"
    groups: dict[tuple[str, str], list[float]] = {}
    for day, version, predicted, label in pairs:
        if regression:
            p, truth = _number(predicted), _number(label)
            if p is None or truth is None:
                continue
            value = abs(p - truth)
        else:
            a, b = _number(predicted), _number(label)
            value = 1.0 if (a is not None and b is not None and a == b) or str(predicted).strip() == label.strip() else 0.0
        groups.setdefault((day, version), []).append(value)
    metric = "mae" if regression else "accuracy"
    all_values = [v for values in groups.values() for v in values]
    out["joined"] = len(all_values)
    out["metric"] = metric
    if all_values:
        out["overall"] = {"n": len(all_values), metric: sum(all_values) / len(all_values)}
    out["by_day"] = [{"day": day, "model_version": version, "n": len(values), metric: sum(values) / len(values)}
                     for (day, version), values in sorted(groups.items())]
    return out
