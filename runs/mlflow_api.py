"""A subset of MLflow's REST tracking API (2.0) under /mlflow/, so the stock MLflow client logs
"external" runs into a portal project:

    MLFLOW_TRACKING_URI=https://portal.example/mlflow MLFLOW_TRACKING_TOKEN=mlp_… python train.py

An experiment is a project (its id is the project's id; names are looked up in the token user's
workspaces, the current one first); a run is a portal run with target `external`. Implemented:
experiments get-by-name / create / get; runs create / update / get / search / log-metric /
log-parameter / set-tag / delete-tag / log-batch; metrics get-history. Authentication is the portal's
bearer token only (no session cookie, hence no CSRF). Errors come in MLflow's own shape,
``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "…"}``, with MLflow's HTTP statuses, since
that is what the client parses: another workspace's project or run is RESOURCE_DOES_NOT_EXIST;
NaN is stored as MLflow stores it and ±Infinity as ±1.7976931348623157e308 (as MLflow's SQL store
does); a param over 6,000 characters or one logged again with another value is INVALID_PARAMETER_VALUE.

Longer than 500 lines on purpose: every endpoint MLflow's client calls, with MLflow's error shape,
in one module; each endpoint is a few lines over ``runs.services`` and ``runs.metrics``.
"""
from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timezone as dt_timezone

from django.db import transaction
from django.db.models import F
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf_exceptions

from runs import checks, selectors, services
from runs.metrics import run_record_metrics
from runs.models import Metric, Project, Run, RunMetricSummary
from workspaces.auth import BearerTokenAuthentication
from core.errors import Conflict, Forbidden, NotFound, PortalError
from workspaces.models import Membership, Role
from workspaces.selectors import current_workspace_and_role, has_role

MLFLOW_VERSION = "3.17.0"  # what /version answers: the API level these endpoints follow
MAX_BATCH_METRICS = 1000  # MLflow's log-batch limits
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100
MAX_BATCH_TOTAL = 1000
MAX_SEARCH_RESULTS = 1000
DOUBLE_MAX = 1.7976931348623157e308

STATUS_FROM_MLFLOW = {"RUNNING": Run.Status.RUNNING, "SCHEDULED": Run.Status.QUEUED, "FINISHED": Run.Status.COMPLETED,
                      "FAILED": Run.Status.FAILED, "KILLED": Run.Status.CANCELED}
STATUS_TO_MLFLOW = {Run.Status.QUEUED: "SCHEDULED", Run.Status.PREPARING: "RUNNING", Run.Status.RUNNING: "RUNNING",
                    Run.Status.COMPLETED: "FINISHED", Run.Status.FAILED: "FAILED", Run.Status.CANCELED: "KILLED",
                    Run.Status.TIMED_OUT: "FAILED", Run.Status.LOST: "FAILED"}
HTTP_STATUS = {"RESOURCE_DOES_NOT_EXIST": 404, "ENDPOINT_NOT_FOUND": 404, "INVALID_PARAMETER_VALUE": 400,
               "RESOURCE_ALREADY_EXISTS": 400, "BAD_REQUEST": 400, "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401,
               "INTERNAL_ERROR": 500}


class MlflowError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _error(code: str, message: str) -> JsonResponse:
    return JsonResponse({"error_code": code, "message": message}, status=HTTP_STATUS.get(code, 400))


def _from_portal(exc: PortalError) -> MlflowError:
    if isinstance(exc, NotFound):
        return MlflowError("RESOURCE_DOES_NOT_EXIST", exc.message)
    if isinstance(exc, Forbidden):
        return MlflowError("PERMISSION_DENIED", exc.message)
    if isinstance(exc, Conflict):
        return MlflowError("RESOURCE_ALREADY_EXISTS", exc.message)
    return MlflowError("INVALID_PARAMETER_VALUE", exc.message)


def endpoint(method: str):
    """Wraps a handler(request, user, body) -> dict: bearer auth, the body (query string for GET,
    JSON for POST), MLflow's error shape for every failure."""

    def wrap(handler):
        @csrf_exempt
        def view(request):
            if request.method != method:
                return _error("ENDPOINT_NOT_FOUND", f"{request.path} answers {method} only.")
            try:
                auth = BearerTokenAuthentication().authenticate(request)
            except drf_exceptions.AuthenticationFailed as exc:
                return _error("UNAUTHENTICATED", str(exc.detail))
            except drf_exceptions.PermissionDenied as exc:  # a read-only token sending a write
                return _error("PERMISSION_DENIED", str(exc.detail))
            if auth is None:
                return _error("UNAUTHENTICATED", "Send the portal's API token: set MLFLOW_TRACKING_TOKEN to a token "
                                                 "from the Tokens page (it goes as 'Authorization: Bearer <token>').")
            user = auth[0]
            try:
                if method == "GET":
                    body = {k: (v if len(v) > 1 else v[0]) for k, v in request.GET.lists()}
                else:
                    try:
                        body = json.loads(request.body or b"{}")
                    except (ValueError, UnicodeDecodeError):
                        raise MlflowError("BAD_REQUEST", "The request body is not JSON.") from None
                    if not isinstance(body, dict):
                        raise MlflowError("BAD_REQUEST", "The request body must be a JSON object.")
                return JsonResponse(handler(request, user, body))
            except MlflowError as exc:
                return _error(exc.code, exc.message)
            except PortalError as exc:
                err = _from_portal(exc)
                return _error(err.code, err.message)

        view.__name__ = handler.__name__
        return view

    return wrap


# --- lookups ---------------------------------------------------------------------------------------

def _workspace_ids(user) -> list:
    return list(Membership.objects.filter(user=user).values_list("workspace_id", flat=True))


def _project(user, experiment_id) -> Project:
    try:
        pk = uuid.UUID(str(experiment_id))
    except (ValueError, AttributeError):
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"No experiment with id {str(experiment_id)[:64]!r}: an experiment "
                                                     "here is a portal project; set the experiment by name "
                                                     "(mlflow.set_experiment('<project>')).") from None
    project = Project.objects.filter(pk=pk, workspace_id__in=_workspace_ids(user)).select_related("workspace").first()
    if project is None:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"No experiment with id {experiment_id} in your workspaces.")
    return project


def _run(user, body: dict) -> Run:
    ref = body.get("run_id") or body.get("run_uuid")
    try:
        pk = uuid.UUID(str(ref))
    except (ValueError, AttributeError):
        raise MlflowError("RESOURCE_DOES_NOT_EXIST" if ref else "INVALID_PARAMETER_VALUE",
                          f"Run {str(ref)[:64]!r} not found" if ref else "Missing value for required parameter 'run_id'.") from None
    # One query: the run, joined to the user's membership of its workspace (its role, for writes).
    run = (Run.objects.filter(pk=pk, workspace__memberships__user=user)
           .annotate(member_role=F("workspace__memberships__role"))
           .select_related("project", "workspace", "created_by").first())
    if run is None:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Run '{ref}' not found in your workspaces.")
    return run


def _writable(user, run: Run) -> Run:
    if not has_role(run.member_role, Role.CONTRIBUTOR):
        raise MlflowError("PERMISSION_DENIED", f"Logging to run {run} needs the contributor role in workspace "
                                               f"'{run.workspace.name}'.")
    return run


def _required(body: dict, name: str):
    value = body.get(name)
    if value in (None, ""):
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Missing value for required parameter '{name}'.")
    return value


def _ms(value, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid value {str(value)[:40]!r} for parameter '{name}': "
                                                     "expected an integer (milliseconds or a step).") from None


def _when(ms: int | None):
    return datetime.fromtimestamp(ms / 1000, tz=dt_timezone.utc) if ms is not None else None


def _epoch_ms(when) -> int | None:
    return int(when.timestamp() * 1000) if when else None


# --- shapes ------------------------------------------------------------------------------------

def _experiment(project: Project) -> dict:
    return {"experiment_id": str(project.pk), "name": project.name, "artifact_location": f"mlportal:/projects/{project.pk}",
            "lifecycle_stage": "active", "creation_time": _epoch_ms(project.created_at),
            "last_update_time": _epoch_ms(project.updated_at),
            "tags": [{"key": "mlportal.workspace", "value": project.workspace.name}]}


def _metric_value(value, text: str):
    if value is None and text == "NaN":
        return "NaN"  # proto3 JSON's spelling, which the client parses
    return value


def _run_info(run: Run) -> dict:
    return {"run_id": run.pk.hex, "run_uuid": run.pk.hex, "run_name": run.script or str(run),
            "experiment_id": str(run.project_id), "user_id": run.created_by.username if run.created_by else "",
            "status": STATUS_TO_MLFLOW.get(run.status, "RUNNING"), "start_time": _epoch_ms(run.started_at or run.created_at),
            "end_time": _epoch_ms(run.ended_at), "artifact_uri": f"mlportal:/runs/{run.pk}/outputs",
            "lifecycle_stage": "active"}


def _run_dict(run: Run) -> dict:
    metrics = [{"key": m.name, "value": _metric_value(m.value, m.text), "timestamp": _epoch_ms(m.logged_at), "step": m.step or 0}
               for m in RunMetricSummary.objects.filter(run=run).order_by("name").defer("chart")
               if m.value is not None or m.text == "NaN"]
    params = [{"key": k, "value": v} for k, v in run.params.order_by("name").values_list("name", "value")]
    tags = [{"key": k, "value": v} for k, v in run.tags.order_by("key").values_list("key", "value")]
    if not any(t["key"] == "mlflow.runName" for t in tags):
        tags.append({"key": "mlflow.runName", "value": run.script or str(run)})
    if run.note:
        tags.append({"key": services.NOTE_TAG, "value": run.note})
    return {"info": _run_info(run), "data": {"metrics": metrics, "params": params, "tags": tags}}


# --- input checks ---------------------------------------------------------------------------------

def _metric_point(item: dict) -> dict:
    """A metric of a request as a runtime point; NaN kept (the service stores it as MLflow does),
    ±Infinity clamped to ±DOUBLE_MAX."""
    # The shape the stock client sends (a log-batch holds 1,000 of them): a plain name, a finite
    # float, whole-number step and timestamp. Anything else takes the full checks below.
    if type(item) is dict:
        key, raw, step, stamp = item.get("key"), item.get("value"), item.get("step"), item.get("timestamp")
        if type(key) is str and 0 < len(key) <= 250 and type(raw) is float and -DOUBLE_MAX <= raw <= DOUBLE_MAX \
                and type(step) is int and -(2**31) <= step < 2**31 and type(stamp) is int and key.strip():
            return {"name": key, "value": raw, "step": step, "time": stamp / 1000}
    if not isinstance(item, dict):
        raise MlflowError("INVALID_PARAMETER_VALUE", "Each metric must be an object with key, value, timestamp and step.")
    key = item.get("key")
    if not isinstance(key, str) or not key.strip() or len(key) > 250:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid metric name {str(key)[:80]!r}: a non-empty name of at most "
                                                     "250 characters.")
    raw = item.get("value")
    if isinstance(raw, bool) or raw is None:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Got invalid value {raw!r} for metric '{key}': expected a number.")
    if isinstance(raw, str):
        spelled = {"nan": math.nan, "infinity": math.inf, "inf": math.inf, "-infinity": -math.inf, "-inf": -math.inf}
        if raw.strip().lower() in spelled:
            value = spelled[raw.strip().lower()]
        else:
            try:
                value = float(raw)
            except ValueError:
                raise MlflowError("INVALID_PARAMETER_VALUE",
                                  f"Got invalid value {raw[:40]!r} for metric '{key}': expected a number.") from None
    elif isinstance(raw, (int, float)):
        value = float(raw)
    else:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Got invalid value for metric '{key}': expected a number.")
    if math.isinf(value):
        value = DOUBLE_MAX if value > 0 else -DOUBLE_MAX
    step = _ms(item.get("step"), "step")
    if step is not None and not -(2**31) <= step < 2**31:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Step {step} of metric '{key}' is out of range (32-bit integers).")
    stamp = _ms(item.get("timestamp"), "timestamp")
    return {"name": key, "value": value, "step": step if step is not None else 0,
            "time": stamp / 1000 if stamp is not None else None}


def _param(item: dict) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise MlflowError("INVALID_PARAMETER_VALUE", "Each param must be an object with key and value.")
    try:
        return checks.check_param(item.get("key"), "" if item.get("value") is None else item.get("value"))
    except PortalError as exc:
        raise MlflowError("INVALID_PARAMETER_VALUE", exc.message) from None


def _tag(item: dict) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise MlflowError("INVALID_PARAMETER_VALUE", "Each tag must be an object with key and value.")
    try:
        return checks.check_tag(item.get("key"), "" if item.get("value") is None else item.get("value"))
    except PortalError as exc:
        raise MlflowError("INVALID_PARAMETER_VALUE", exc.message) from None


def _store(run: Run, *, metrics=(), params=(), tags=()) -> None:
    """Writes checked metrics, params and tags of one request together: a refused param stores nothing."""
    if metrics and not params and not tags:
        # The usual log-batch: one transaction of its own (no savepoint inside an outer one,
        # two round trips fewer per batch).
        run_record_metrics(run_id=run.id, workspace_id=run.workspace_id, points=list(metrics))
        return
    with transaction.atomic():
        problems = services.run_log_params(run_id=run.id, workspace_id=run.workspace_id, params=list(params))
        if problems:
            transaction.set_rollback(True)
            raise MlflowError("INVALID_PARAMETER_VALUE", " ".join(problems) + " (MLflow refuses it too: INVALID_PARAMETER_VALUE)")
        if tags:
            services.run_set_tags(run_id=run.id, workspace_id=run.workspace_id, tags=list(tags))
        if metrics:
            run_record_metrics(run_id=run.id, workspace_id=run.workspace_id, points=list(metrics))


# --- endpoints ------------------------------------------------------------------------------------

@endpoint("GET")
def experiments_get_by_name(request, user, body):
    name = str(_required(body, "experiment_name"))
    matches = list(Project.objects.filter(name=name, workspace_id__in=_workspace_ids(user)).select_related("workspace")[:20])
    current, _ = current_workspace_and_role(user)
    matches.sort(key=lambda p: p.workspace_id != getattr(current, "pk", None))
    if not matches:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Could not find experiment with name '{name[:100]}'")
    return {"experiment": _experiment(matches[0])}


@endpoint("POST")
def experiments_create(request, user, body):
    name = str(_required(body, "name"))
    workspace, _ = current_workspace_and_role(user)
    if workspace is None:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", "You belong to no workspace: join or create one first.")
    try:
        project = services.project_create(workspace=workspace, name=name, user=user,
                                          description="Created by an MLflow client (experiments/create).")
    except Conflict:
        raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment '{name}' already exists.") from None
    return {"experiment_id": str(project.pk)}


@endpoint("GET")
def experiments_get(request, user, body):
    return {"experiment": _experiment(_project(user, _required(body, "experiment_id")))}


@endpoint("POST")
def runs_create(request, user, body):
    project = _project(user, _required(body, "experiment_id"))
    tags = [_tag(t) for t in body.get("tags") or []]
    run_name = body.get("run_name") or next((v for k, v in tags if k == "mlflow.runName"), "")
    run = services.run_create_external(project=project, user=user, run_name=str(run_name or ""),
                                       started_at=_when(_ms(body.get("start_time"), "start_time")), tags=tags)
    run = Run.objects.select_related("project", "workspace", "created_by").get(pk=run.pk)
    return {"run": _run_dict(run)}


@endpoint("POST")
def runs_update(request, user, body):
    run = _writable(user, _run(user, body))
    status = body.get("status")
    if status is not None and status not in STATUS_FROM_MLFLOW:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid status {str(status)[:20]!r}: use one of "
                                                     f"{', '.join(STATUS_FROM_MLFLOW)}.")
    run = services.run_update_external(run=run, user=user, status=STATUS_FROM_MLFLOW.get(status),
                                       ended_at=_when(_ms(body.get("end_time"), "end_time")),
                                       run_name=str(body.get("run_name") or "") or None)
    if run.status in Run.FINISHED:
        from runs.tasks import prepare_run_charts

        run_id = str(run.id)
        transaction.on_commit(lambda: prepare_run_charts.delay(run_id))
    return {"run_info": _run_info(run)}


@endpoint("GET")
def runs_get(request, user, body):
    return {"run": _run_dict(_run(user, body))}


@endpoint("POST")
def runs_log_metric(request, user, body):
    run = _writable(user, _run(user, body))
    _store(run, metrics=[_metric_point(body)])
    return {}


@endpoint("POST")
def runs_log_parameter(request, user, body):
    run = _writable(user, _run(user, body))
    _store(run, params=[_param(body)])
    return {}


@endpoint("POST")
def runs_set_tag(request, user, body):
    run = _writable(user, _run(user, body))
    _store(run, tags=[_tag(body)])
    return {}


@endpoint("POST")
def runs_delete_tag(request, user, body):
    run = _writable(user, _run(user, body))
    key = str(_required(body, "key"))
    if not run.tags.filter(key=key).exists():
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"No tag with name: {key} in run with id {run.pk.hex}")
    run.tags.filter(key=key).delete()
    return {}


@endpoint("POST")
def runs_log_batch(request, user, body):
    run = _writable(user, _run(user, body))
    metrics, params, tags = body.get("metrics") or [], body.get("params") or [], body.get("tags") or []
    if not all(isinstance(x, list) for x in (metrics, params, tags)):
        raise MlflowError("INVALID_PARAMETER_VALUE", "metrics, params and tags must be lists.")
    if len(metrics) > MAX_BATCH_METRICS or len(params) > MAX_BATCH_PARAMS or len(tags) > MAX_BATCH_TAGS \
            or len(metrics) + len(params) + len(tags) > MAX_BATCH_TOTAL:
        raise MlflowError("INVALID_PARAMETER_VALUE",
                          f"A batch logging request can contain at most {MAX_BATCH_METRICS} metrics, {MAX_BATCH_PARAMS} "
                          f"params and {MAX_BATCH_TAGS} tags, {MAX_BATCH_TOTAL} in all; got {len(metrics)} metrics, "
                          f"{len(params)} params and {len(tags)} tags.")
    _store(run, metrics=[_metric_point(m) for m in metrics], params=[_param(p) for p in params], tags=[_tag(t) for t in tags])
    return {}


@endpoint("GET")
def metrics_get_history(request, user, body):
    run = _run(user, body)
    key = str(_required(body, "metric_key"))
    rows = Metric.objects.filter(run=run, name=key).order_by("step", "logged_at", "id").values_list("value", "text", "step", "logged_at")
    return {"metrics": [{"key": key, "value": _metric_value(v, t), "timestamp": _epoch_ms(at), "step": s or 0}
                        for v, t, s, at in rows if v is not None or t == "NaN"]}


_ORDER_ATTRIBUTES = {"start_time": "started_at", "end_time": "ended_at", "run_name": "script", "status": "status",
                     "created": "created_at"}


def _order(order_by) -> str:
    """MLflow's `order_by` (["metrics.acc DESC"]) as the runs list's ordering (first key only)."""
    if not order_by:
        return "-created_at"
    first = order_by[0] if isinstance(order_by, list) else str(order_by)
    parts = str(first).rsplit(None, 1)
    desc = len(parts) == 2 and parts[1].upper() == "DESC"
    key = parts[0] if len(parts) == 2 and parts[1].upper() in ("ASC", "DESC") else str(first)
    entity, _, name = key.partition(".")
    name = name.strip("`\"'")
    prefix = "-" if desc else ""
    if entity in ("metrics", "metric"):
        return f"{prefix}metric:{name}"
    if entity in ("params", "param"):
        return f"{prefix}param:{name}"
    if entity in ("tags", "tag"):
        return f"{prefix}tag:{name}"
    if entity in ("attributes", "attribute", "attr") and name in _ORDER_ATTRIBUTES:
        return f"{prefix}{_ORDER_ATTRIBUTES[name]}"
    raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid order_by clause {first!r}: order by metrics.<name>, "
                                                 f"params.<name>, tags.<name> or attributes.start_time / end_time / run_name.")


@endpoint("POST")
def runs_search(request, user, body):
    ids = body.get("experiment_ids") or []
    if not isinstance(ids, list) or not ids:
        raise MlflowError("INVALID_PARAMETER_VALUE", "Name at least one experiment in experiment_ids.")
    projects = [_project(user, i) for i in ids]
    try:
        limit = int(body.get("max_results") or MAX_SEARCH_RESULTS)
        offset = int(body.get("page_token") or 0)
    except (TypeError, ValueError):
        raise MlflowError("INVALID_PARAMETER_VALUE", "max_results and page_token must be integers.") from None
    if not 1 <= limit <= MAX_SEARCH_RESULTS:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"max_results must be between 1 and {MAX_SEARCH_RESULTS}.")
    qs = selectors.runs_base(Run.objects.filter(project__in=projects))
    qs = selectors.apply_filter(qs, str(body.get("filter") or ""), {p.workspace_id for p in projects})
    qs = selectors.order_runs(qs, _order(body.get("order_by")))
    page = list(qs[max(0, offset):max(0, offset) + limit + 1])
    more = len(page) > limit
    out: dict = {"runs": [_run_dict(r) for r in page[:limit]]}
    if more:
        out["next_page_token"] = str(offset + limit)
    return out


def version(request):
    return HttpResponse(MLFLOW_VERSION, content_type="text/plain")


def not_found(request, rest: str = ""):
    return _error("ENDPOINT_NOT_FOUND", f"The portal's MLflow API has no endpoint {request.path}: it serves experiments "
                                        "get-by-name/create/get, runs create/update/get/search/log-metric/log-parameter/"
                                        "set-tag/delete-tag/log-batch and metrics get-history.")


_PREFIX = "api/2.0/mlflow/"
urlpatterns = [
    path("version", version, name="mlflow-version"),
    path(_PREFIX + "experiments/get-by-name", experiments_get_by_name),
    path(_PREFIX + "experiments/create", experiments_create),
    path(_PREFIX + "experiments/get", experiments_get),
    path(_PREFIX + "runs/create", runs_create),
    path(_PREFIX + "runs/update", runs_update),
    path(_PREFIX + "runs/get", runs_get),
    path(_PREFIX + "runs/search", runs_search),
    path(_PREFIX + "runs/log-metric", runs_log_metric),
    path(_PREFIX + "runs/log-parameter", runs_log_parameter),
    path(_PREFIX + "runs/set-tag", runs_set_tag),
    path(_PREFIX + "runs/delete-tag", runs_delete_tag),
    path(_PREFIX + "runs/log-batch", runs_log_batch),
    path(_PREFIX + "metrics/get-history", metrics_get_history),
    path("<path:rest>", csrf_exempt(not_found)),
]
