"""Read queries of the runs app: run lists with metric columns, filters and ordering; logs; compare."""
from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable

from django.db.models import DurationField, ExpressionWrapper, F, FilteredRelation, Q, QuerySet

from runs import filtering
from runs.models import Metric, Project, Run, RunLogChunk, RunMetricSummary, RunParam, RunTag
from core.errors import PortalError
from core.logs import log_text, read_log

# Columns the runs list can be ordered by (API `?ordering=` and the page's column headers).
RUN_ORDERING = {
    "number": "number",
    "script": "script",
    "status": "status",
    "target": "target",
    "kind": "kind",
    "created_at": "created_at",
    "started_at": "started_at",
    "ended_at": "ended_at",
    "duration": "duration_value",
    "user": "created_by__username",
    "project": "project__name",
    "exit_code": "exit_code",
}
NULLABLE_COLUMNS = {"started_at", "ended_at", "duration", "user", "exit_code"}
METRIC_OPS = {"metric_gt": "gt", "metric_gte": "gte", "metric_lt": "lt", "metric_lte": "lte", "metric_eq": "exact"}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


_OPS = {"=": "exact", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}
_ATTRIBUTE_FIELDS = {"status": "status", "target": "target", "script": "script", "kind": "kind", "number": "number",
                     "user": "created_by__username", "project": "project__name", "note": "note", "run_name": "script"}


def _compare(field: str, op: str, value) -> Q:
    """The Q of `field <op> value` (the filter's comparators; LIKE through an anchored regex)."""
    if op == "!=":
        return ~Q(**{field: value})
    if op == "LIKE":
        return Q(**{f"{field}__regex": filtering.like_to_regex(str(value))})
    if op == "ILIKE":
        return Q(**{f"{field}__iregex": filtering.like_to_regex(str(value))})
    if op == "IN":
        return Q(**{f"{field}__in": list(value)})
    if op == "NOT IN":
        return ~Q(**{f"{field}__in": list(value)})
    return Q(**{f"{field}__{_OPS[op]}": value})


def apply_filter(qs: QuerySet, text: str, workspace_ids: Iterable | None = None) -> QuerySet:
    """Narrows runs to those matching a filter string (`runs.filtering`); PortalError naming the token
    it could not read. Each clause is one `id IN (…)` over the summary, param or tag table, led by the
    workspace so its (workspace, name…) index serves it; a run lacking the metric/param/tag never matches."""
    try:
        clauses = filtering.parse(text)
    except filtering.FilterError as exc:
        raise PortalError(exc.message, code="invalid_filter", fields={"filter": exc.message}) from None
    scope = Q(workspace_id__in=list(workspace_ids)) if workspace_ids is not None else Q()
    for clause in clauses:
        if clause.entity == "metrics":
            cond = Q(name=clause.key) & _compare("value", clause.op, clause.value) & Q(value__isnull=False)
            qs = qs.filter(id__in=RunMetricSummary.objects.filter(scope & cond).values("run_id"))
        elif clause.entity == "params":
            cond = Q(name=clause.key) & _compare("value", clause.op, clause.value)
            qs = qs.filter(id__in=RunParam.objects.filter(scope & cond).values("run_id"))
        elif clause.entity == "tags":
            cond = Q(key=clause.key) & _compare("value", clause.op, clause.value)
            qs = qs.filter(id__in=RunTag.objects.filter(scope & cond).values("run_id"))
        else:
            value = int(clause.value) if clause.key == "number" else clause.value
            qs = qs.filter(_compare(_ATTRIBUTE_FIELDS[clause.key], clause.op, value))
    return qs


def filter_runs(qs: QuerySet, params, workspace_ids: Iterable | None = None) -> QuerySet:
    """Applies the runs-list filters of a query dict: project (id or name), script, status, user,
    target, kind, q (search in script and project name), `filter` (the filter language, see
    `apply_filter`) and one metric comparison (`metric=<name>&metric_gt=<number>`, also _gte, _lt,
    _lte, _eq). Raises PortalError for a filter it cannot read, a comparison value that is not a
    number or one given without `metric`."""
    if text := (params.get("filter") or "").strip():
        qs = apply_filter(qs, text, workspace_ids)
    if project := (params.get("project") or "").strip():
        qs = qs.filter(project_id=project) if _is_uuid(project) else qs.filter(project__name=project)
    if script := (params.get("script") or "").strip():
        qs = qs.filter(script=script)
    if status := (params.get("status") or "").strip():
        qs = qs.filter(status__in=[s for s in status.split(",") if s])
    if user := (params.get("user") or "").strip():
        qs = qs.filter(created_by__username=user)
    if target := (params.get("target") or "").strip():
        qs = qs.filter(target=target)
    if kind := (params.get("kind") or "").strip():
        qs = qs.filter(kind=kind)
    if q := (params.get("q") or params.get("search") or "").strip():
        query = Q(script__icontains=q) | Q(project__name__icontains=q)
        if q.lstrip("#").isdigit():
            query |= Q(number=int(q.lstrip("#")))
        qs = qs.filter(query)
    metric = (params.get("metric") or "").strip()
    comparisons = {op: params.get(key) for key, op in METRIC_OPS.items() if params.get(key) not in (None, "")}
    if comparisons and not metric:
        raise PortalError("A metric comparison needs the metric name too, e.g. ?metric=Accuracy&metric_gt=0.8.",
                          fields={"metric": "Name the metric to compare."})
    if metric and comparisons:
        # The summary table holds one row per (run, name); its (workspace, name, value) index
        # answers this without touching the metric points.
        cond = Q(name=metric)
        for op, raw in comparisons.items():
            try:
                number = float(raw)
            except (TypeError, ValueError):
                raise PortalError(f"Metric comparison value {str(raw)[:40]!r} is not a number.",
                                  fields={"metric_value": "Not a number."}) from None
            cond &= Q(**{f"value__{op}": number})
        qs = qs.filter(id__in=RunMetricSummary.objects.filter(cond).values("run_id"))
    elif metric:
        qs = qs.filter(id__in=RunMetricSummary.objects.filter(name=metric).values("run_id"))
    return qs


def order_runs(qs: QuerySet, ordering: str | None) -> QuerySet:
    """Orders by a column of RUN_ORDERING or by a metric's last value (`metric:<name>`), `-` for
    descending; runs without that metric come last either way. Unknown columns: PortalError."""
    ordering = (ordering or "").strip() or "-created_at"
    desc = ordering.startswith("-")
    key = ordering.lstrip("-")
    if key.startswith("metric:"):
        name = key.split(":", 1)[1]
        qs = qs.annotate(sort_metric=FilteredRelation("metric_summaries", condition=Q(metric_summaries__name=name)))
        expr = F("sort_metric__value")
        return qs.order_by(expr.desc(nulls_last=True) if desc else expr.asc(nulls_last=True), "-created_at")
    if key.startswith(("param:", "tag:")):
        kind, name = key.split(":", 1)
        relation, field = ("params", "name") if kind == "param" else ("tags", "key")
        qs = qs.annotate(sort_kv=FilteredRelation(relation, condition=Q(**{f"{relation}__{field}": name})))
        expr = F("sort_kv__value")
        return qs.order_by(expr.desc(nulls_last=True) if desc else expr.asc(nulls_last=True), "-created_at")
    if key not in RUN_ORDERING:
        allowed = ", ".join(sorted(RUN_ORDERING)) + ", metric:<name>, param:<name>, tag:<name>"
        raise PortalError(f"Cannot order runs by {key!r}: use one of {allowed} (prefix '-' for descending).",
                          fields={"ordering": "Unknown column."})
    if key == "duration":
        qs = qs.annotate(duration_value=ExpressionWrapper(F("ended_at") - F("started_at"), output_field=DurationField()))
    expr = F(RUN_ORDERING[key])
    if key not in NULLABLE_COLUMNS:  # a plain ORDER BY can walk an index; NULLS LAST cannot
        return qs.order_by(expr.desc() if desc else expr.asc(), "-created_at")
    return qs.order_by(expr.desc(nulls_last=True) if desc else expr.asc(nulls_last=True), "-created_at")


def runs_base(qs: QuerySet | None = None) -> QuerySet:
    return (qs if qs is not None else Run.objects.all()).select_related("project", "created_by")


def runs_in_order(ids: Iterable) -> list[Run]:
    """The runs of ``ids`` with their project and creator, in the order of ``ids``.

    A page of runs is sorted as ids first (``qs.values_list("pk", flat=True)``, then sliced), and
    its rows read here: sorting 10,000 runs by a metric then moves an id and the sort keys per run
    through the database's sort instead of every column of the run, its project and its creator."""
    ids = list(ids)
    found = {run.pk: run for run in runs_base(Run.objects.filter(pk__in=ids))}
    return [found[pk] for pk in ids if pk in found]


def metric_names(workspace_ids: Iterable) -> list[str]:
    """Names of the metrics the runs of these workspaces log (the runs list's metric columns)."""
    return list(
        RunMetricSummary.objects.filter(workspace_id__in=list(workspace_ids)).values_list("name", flat=True).distinct().order_by("name")[:50]
    )


def param_names(workspace_ids: Iterable) -> list[str]:
    """Names of the params the runs of these workspaces log (the choices of param columns)."""
    return list(RunParam.objects.filter(workspace_id__in=list(workspace_ids)).values_list("name", flat=True)
                .distinct().order_by("name")[:200])


def attach_params_and_tags(runs: list[Run]) -> list[Run]:
    """Sets `run.param_values` and `run.tag_values` ({name: value}) on each run, two queries in all."""
    ids = [r.id for r in runs]
    params: dict = defaultdict(dict)
    for run_id, name, value in RunParam.objects.filter(run_id__in=ids).values_list("run_id", "name", "value"):
        params[run_id][name] = value
    tags: dict = defaultdict(dict)
    for run_id, key, value in RunTag.objects.filter(run_id__in=ids).values_list("run_id", "key", "value"):
        tags[run_id][key] = value
    for run in runs:
        run.param_values = params.get(run.id, {})
        run.tag_values = tags.get(run.id, {})
    return runs


def attach_metric_summaries(runs: list[Run]) -> list[Run]:
    """Sets `run.metric_values = {name: last value}` on each run with one query."""
    by_run: dict = defaultdict(dict)
    for run_id, name, value, text in RunMetricSummary.objects.filter(run_id__in=[r.id for r in runs]).values_list(
        "run_id", "name", "value", "text"
    ):
        by_run[run_id][name] = value if value is not None else text
    for run in runs:
        run.metric_values = by_run.get(run.id, {})
    return runs


CHART_POINTS = 1000
MAX_CHART_POINTS = 5000


def _series_points(run_id, name: str, min_step: int | None = None, max_step: int | None = None) -> tuple[list, list]:
    """(steps, values) of one numeric series in step order, read with a raw cursor (100,000 rows in
    about a tenth of a second; model instances would take ten times that)."""
    qs = Metric.objects.filter(run_id=run_id, name=name, step__isnull=False, value__isnull=False)
    if min_step is not None:
        qs = qs.filter(step__gte=min_step)
    if max_step is not None:
        qs = qs.filter(step__lte=max_step)
    rows = qs.order_by("step", "id").values_list("step", "value")
    sql, params = rows.query.sql_with_params()
    from django.db import connections

    with connections[rows.db].cursor() as cursor:
        cursor.execute(sql, params)
        data = cursor.fetchall()
    return [r[0] for r in data], [r[1] for r in data]


def _chart_entry(steps: list, values: list, points: int) -> dict:
    from runs.downsample import downsample

    kept_steps, kept_values = downsample(steps, values, points)
    return {"steps": kept_steps, "values": [float(f"{v:.7g}") for v in kept_values], "points": len(steps),
            "sampled": len(kept_steps) < len(steps)}


def chart_series(run: Run, *, names: Iterable[str] | None = None, points: int = CHART_POINTS,
                 min_step: int | None = None, max_step: int | None = None) -> dict[str, dict]:
    """Every numeric series of the run logged with steps (or those `names`), each downsampled to
    about `points` points keeping first, last, minimum and maximum: {name: {"steps", "values",
    "points" (how many the series holds in the range), "sampled"}}. With a step range, the points in
    that range, at full resolution when they number at most `points`. The whole-series answer at
    the default size is kept on the series' summary row until more points arrive."""
    qs = RunMetricSummary.objects.filter(run=run, step__isnull=False).order_by("name")
    if names is not None:
        qs = qs.filter(name__in=list(names))
    out: dict[str, dict] = {}
    whole = min_step is None and max_step is None and points == CHART_POINTS
    for summary in qs.only("id", "name", "count", "chart", "chart_count"):
        if whole and summary.chart is not None and summary.chart_count == summary.count:
            out[summary.name] = summary.chart
            continue
        steps, values = _series_points(run.id, summary.name, min_step, max_step)
        if not steps and min_step is None and max_step is None:
            continue  # a name logged with steps but only text or NaN values
        entry = _chart_entry(steps, values, points)
        out[summary.name] = entry
        if whole:
            RunMetricSummary.objects.filter(id=summary.id, count=summary.count).update(chart=entry, chart_count=summary.count)
    return out


def summaries_of(run: Run) -> QuerySet:
    """The run's metric summaries (last value of each name), by name; the chart cache left out."""
    return RunMetricSummary.objects.filter(run=run).order_by("name").defer("chart")


def log_since(run: Run, offset: int) -> tuple[str, int]:
    """Returns the log text after chunk `offset` (core.logs) and the next offset."""
    page = read_log(RunLogChunk.objects.filter(run=run), offset, finished=False)
    return page["text"], page["offset"]


def run_log(run: Run, offset: int) -> dict:
    """`{text, offset, done}` of the run's live log (core.logs); `done` once it ended and all was read."""
    return read_log(RunLogChunk.objects.filter(run=run), offset, finished=not run.is_active)


def log_chunks(run: Run) -> Iterable[str]:
    """The whole log, chunk by chunk (for the download), without loading it all at once."""
    return log_text(RunLogChunk.objects.filter(run=run))


def project_scripts(project: Project) -> list[str]:
    return list(project.files.filter(path__endswith=".py").order_by("path").values_list("path", flat=True))


def compare(runs: list[Run], *, with_series: bool = True) -> dict:
    """Params, tags, arguments, metrics and outputs of runs side by side, with the rows that differ
    marked; `series` (each run's chart series) unless with_series is False; `parallel`: for the
    parallel-coordinates chart, each run's params and last metric values."""
    attach_metric_summaries(runs)
    attach_params_and_tags(runs)
    param_names = sorted({n for r in runs for n in r.param_values})
    param_rows = []
    for name in param_names:
        values = [r.param_values.get(name) for r in runs]
        param_rows.append({"name": name, "values": values, "differs": len(set(values)) > 1})
    tag_keys = sorted({k for r in runs for k in r.tag_values})
    tag_rows = [{"name": k, "values": [r.tag_values.get(k) for r in runs],
                 "differs": len({r.tag_values.get(k) for r in runs}) > 1} for k in tag_keys]
    names = sorted({n for r in runs for n in r.metric_values})
    metric_rows = []
    for name in names:
        values = [r.metric_values.get(name) for r in runs]
        numeric = [v for v in values if isinstance(v, (int, float))]
        best = max(numeric) if len(numeric) > 1 else None  # "best" only means something between runs
        metric_rows.append({"name": name, "values": values, "differs": len({repr(v) for v in values}) > 1, "best": best})
    outputs = {r.id: {o.path: o for o in r.outputs.all()} for r in runs}
    paths = sorted({p for r in runs for p in outputs[r.id]})
    output_rows = []
    for path in paths:
        cells = [outputs[r.id].get(path) for r in runs]
        output_rows.append({"path": path, "cells": cells,
                            "differs": len({c.sha256 if c else None for c in cells}) > 1})
    props = [
        ("Project", [r.project.name for r in runs]),
        ("Script", [r.script or "(prepare)" for r in runs]),
        ("Arguments", [" ".join(r.args or []) or "—" for r in runs]),
        ("Target", [r.target for r in runs]),
        ("Status", [r.status for r in runs]),
        ("Duration (s)", [r.duration_s for r in runs]),
        ("Snapshot SHA-256", [r.snapshot_sha256[:12] for r in runs]),
    ]
    property_rows = [{"name": n, "values": v, "differs": len({repr(x) for x in v}) > 1} for n, v in props]
    series = {str(r.id): chart_series(r) for r in runs} if with_series else {}
    parallel = {
        "params": param_names,
        "metrics": [row["name"] for row in metric_rows if any(isinstance(v, (int, float)) for v in row["values"])],
        "runs": [{"label": str(r), "id": str(r.id), "params": r.param_values,
                  "metrics": {k: v for k, v in r.metric_values.items() if isinstance(v, (int, float))}} for r in runs],
    }
    return {"runs": runs, "properties": property_rows, "params": param_rows, "tags": tag_rows, "metrics": metric_rows,
            "outputs": output_rows, "series": series, "parallel": parallel}
