"""REST API: projects and their files, templates, runs with their logs, metrics and outputs."""
from __future__ import annotations

import gzip
import json
import mimetypes
import tempfile
import zipfile

from django.db.models import Count
from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from core.api_base import Pagination, WorkspaceScopedViewSet, is_uuid, workspace_from_request
from core.errors import NotFound, PayloadTooLarge, PortalError
from core.logs import parse_offset
from core.storage import open_file
from runs import catalog, chart_cache, checks, selectors, services
from runs.models import Project, ProjectFile, Run, RunOutput
from workspaces.models import Role
from workspaces.selectors import current_workspace_and_role

TRUE = {"1", "true", "yes", "on"}


def _flag(value) -> bool:
    return str(value or "").strip().lower() in TRUE


def attachment(fileobj, filename: str, *, content_type: str | None = None) -> FileResponse:
    """A download: always an attachment, with nosniff so a browser never renders it as a page."""
    response = FileResponse(fileobj, as_attachment=True, filename=filename,
                            content_type=content_type or "application/octet-stream")
    response["X-Content-Type-Options"] = "nosniff"
    return response


class _RequestReader:
    """Lets a service read a raw request body in chunks (PUT of one file) without Django's 2 MB body cap."""

    def __init__(self, request):
        self.request = request

    def read(self, n: int = -1) -> bytes:
        return self.request.read(n if n and n > 0 else 1024 * 1024)


# --- serializers ----------------------------------------------------------------------------------

class ProjectSerializer(serializers.ModelSerializer):
    workspace = serializers.CharField(source="workspace.name", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    url = serializers.CharField(source="get_absolute_url", read_only=True)
    file_count = serializers.IntegerField(read_only=True, default=None)
    outputs_cap_mb = serializers.IntegerField(read_only=True, help_text="The outputs cap its runs get (MiB)")
    # Plain strings, not enums: the schema's enum names would collide with other apps' "status".
    default_target = serializers.CharField(read_only=True, help_text="docker or local")

    class Meta:
        model = Project
        fields = ["id", "name", "workspace", "description", "template", "requirements", "default_target", "time_limit_s",
                  "memory_mb", "cpus", "allow_network", "outputs_max_mb", "outputs_cap_mb", "file_count", "url", "created_by",
                  "created_at", "updated_at"]
        read_only_fields = fields


class ProjectWriteSerializer(serializers.Serializer):
    name = serializers.CharField(required=False)
    workspace = serializers.CharField(required=False)
    template = serializers.CharField(required=False, allow_blank=True, allow_null=True)
    description = serializers.CharField(required=False, allow_blank=True)
    requirements = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    default_target = serializers.CharField(required=False)
    time_limit_s = serializers.IntegerField(required=False)
    memory_mb = serializers.IntegerField(required=False)
    cpus = serializers.FloatField(required=False)
    allow_network = serializers.BooleanField(required=False)
    outputs_max_mb = serializers.IntegerField(required=False, help_text="Cap on a run's outputs (MiB), at most the portal's")


class ProjectFileSerializer(serializers.ModelSerializer):
    class Meta:
        model = ProjectFile
        fields = ["path", "size", "sha256", "updated_at"]


class TemplateSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    default_script = serializers.CharField()
    files = serializers.ListField(child=serializers.CharField())


class RunSerializer(serializers.ModelSerializer):
    name = serializers.CharField(source="__str__", read_only=True)
    project = serializers.CharField(source="project.name", read_only=True)
    project_id = serializers.UUIDField(read_only=True)
    workspace = serializers.CharField(source="workspace_id", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    duration_s = serializers.FloatField(read_only=True)
    url = serializers.CharField(source="get_absolute_url", read_only=True)
    metrics = serializers.SerializerMethodField()
    params = serializers.SerializerMethodField()
    tags = serializers.SerializerMethodField()
    status = serializers.CharField(read_only=True, help_text="queued, preparing, running, completed, failed, canceled, timed_out or lost")
    target = serializers.CharField(read_only=True, help_text="docker, local, or external (logged by an MLflow client)")
    kind = serializers.CharField(read_only=True, help_text="script or prepare")

    class Meta:
        model = Run
        fields = ["id", "name", "number", "project", "project_id", "workspace", "kind", "script", "args", "target", "status",
                  "status_reason", "exit_code", "oom", "image", "snapshot_sha256", "container_id", "created_by",
                  "created_at", "started_at", "ended_at", "heartbeat_at", "duration_s", "metrics", "params", "tags", "note", "url"]
        read_only_fields = fields

    def get_metrics(self, obj) -> dict:
        return getattr(obj, "metric_values", {})

    def get_params(self, obj) -> dict[str, str]:
        return getattr(obj, "param_values", {})

    def get_tags(self, obj) -> dict[str, str]:
        return getattr(obj, "tag_values", {})


class RunDetailSerializer(RunSerializer):
    outputs_count = serializers.IntegerField(read_only=True)
    log_bytes = serializers.IntegerField(read_only=True)
    log_truncated = serializers.BooleanField(read_only=True)

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "outputs_count", "log_bytes", "log_truncated"]
        read_only_fields = fields


class RunSubmitSerializer(serializers.Serializer):
    project = serializers.CharField(help_text="Project id or name")
    script = serializers.CharField()
    args = serializers.JSONField(required=False, help_text="List of string arguments")
    target = serializers.CharField(required=False, help_text="docker or local (default: the project's)")
    workspace = serializers.CharField(required=False)


class RunAnnotateSerializer(serializers.Serializer):
    tags = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False, help_text="Tags to set (key → value)")
    delete_tags = serializers.ListField(child=serializers.CharField(), required=False, help_text="Tag keys to remove")
    note = serializers.CharField(required=False, allow_blank=True, help_text="Replaces the run's note")


class RunParamsSerializer(serializers.Serializer):
    params = serializers.DictField(help_text="name → value (stored as text); a name logged before must keep its value")


class RunOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunOutput
        fields = ["path", "size", "sha256"]


class MetricPointSerializer(serializers.Serializer):
    name = serializers.CharField()
    value = serializers.FloatField(allow_null=True)
    text = serializers.CharField()
    step = serializers.IntegerField(allow_null=True)
    logged_at = serializers.DateTimeField()


# --- projects -------------------------------------------------------------------------------------

class ProjectViewSet(WorkspaceScopedViewSet):
    """Projects (code + data + requirements.txt); addressable by id or name. POST
    `{"name", "workspace"?, "template"?: "churn", "description"?}`; PATCH changes run settings."""

    queryset = Project.objects.select_related("workspace", "created_by").annotate(file_count=Count("files"))
    serializer_class = ProjectSerializer
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at", "updated_at"]
    ordering = ["name"]
    filterset_fields = ["template", "default_target"]
    action_roles = {"file": Role.CONTRIBUTOR, "upload": Role.CONTRIBUTOR, "prepare": Role.CONTRIBUTOR}
    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]

    def get_serializer_class(self):
        if self.action in ("create", "partial_update", "update"):
            return ProjectWriteSerializer
        return ProjectSerializer

    def _out(self, project: Project, status: int = 200) -> Response:
        project = self.get_queryset().get(pk=project.pk)
        return Response(ProjectSerializer(project, context=self.get_serializer_context()).data, status=status)

    def create(self, request, *args, **kwargs):
        data = self._data(request)
        workspace = workspace_from_request(request, role=Role.CONTRIBUTOR)
        project = services.project_create(
            workspace=workspace, name=str(data.get("name") or ""), user=request.user,
            description=str(data.get("description") or ""), template=data.get("template") or None,
        )
        return self._out(project, 201)

    def update(self, request, *args, **kwargs):
        project = self.get_object()
        data = self._data(request)
        fields = ("description", "requirements", "default_target", "time_limit_s", "memory_mb", "cpus", "allow_network",
                  "outputs_max_mb")
        unknown = sorted(set(data) - set(fields) - {"name", "workspace"})
        if unknown:
            raise PortalError(f"Cannot change {', '.join(unknown)}: send only {', '.join(fields)}.",
                              fields={k: "Not a setting." for k in unknown})
        if "name" in data and data["name"] != project.name:
            raise PortalError("A project cannot be renamed: create a new project instead.", fields={"name": "Read-only."})
        values = {k: data[k] for k in fields if k in data}
        if "allow_network" in values and not isinstance(values["allow_network"], bool):
            values["allow_network"] = _flag(values["allow_network"])
        services.project_update_settings(project=project, user=request.user, **values)
        return self._out(project)

    def destroy(self, request, *args, **kwargs):
        services.project_delete(project=self.get_object(), user=request.user)
        return Response(status=204)

    @staticmethod
    def _data(request) -> dict:
        data = request.data
        if not hasattr(data, "get"):
            raise PortalError("Send a JSON object.", code="parse_error")
        return {k: data.get(k) for k in data.keys()}

    @extend_schema(responses=ProjectFileSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="files")
    def files(self, request, pk=None):
        """The project's files: `?q=` filters by path, `?ordering=path|-size|…`, paginated."""
        project = self.get_object()
        qs = project.files.all()
        if q := request.query_params.get("q") or request.query_params.get("search"):
            qs = qs.filter(path__icontains=q)
        ordering = request.query_params.get("ordering") or "path"
        if ordering.lstrip("-") not in ("path", "size", "updated_at"):
            raise PortalError(f"Cannot order files by {ordering!r}: use path, size or updated_at.", fields={"ordering": "Unknown."})
        page = self.paginate_queryset(qs.order_by(ordering))
        return self.get_paginated_response(ProjectFileSerializer(page, many=True).data)

    @extend_schema(request={"application/octet-stream": bytes}, responses={200: bytes, 201: ProjectFileSerializer})
    def file(self, request, pk=None, path: str = ""):
        """GET downloads one file (attachment); PUT writes the raw body to it; DELETE removes it."""
        project = self.get_object()
        path = path.rstrip("/")
        if request.method == "PUT":
            existed = project.files.filter(path=path).exists()
            row = services.project_file_put(project=project, path=path, content=_RequestReader(request._request), user=request.user)
            return Response(ProjectFileSerializer(row).data, status=200 if existed else 201)
        if request.method == "DELETE":
            services.project_file_delete(project=project, path=path, user=request.user)
            return Response(status=204)
        row = project.files.filter(path=path).first()
        if row is None:
            raise NotFound(f"Project '{project.name}' has no file '{path[:200]}'.")
        return attachment(open_file(row.storage_name), row.path.rsplit("/", 1)[-1])

    @extend_schema(request={"multipart/form-data": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}, "path": {"type": "string"},
        "extract": {"type": "boolean"}, "replace": {"type": "boolean"}}}}, responses=ProjectFileSerializer(many=True))
    @action(detail=True, methods=["post"], url_path="upload", parser_classes=[MultiPartParser, FormParser])
    def upload(self, request, pk=None):
        """Multipart `file`: one file (stored at `path`, default its name) or, with `extract=true`, a zip
        or tar.gz extracted into the project; `replace=true` makes the upload the project's only files."""
        project = self.get_object()
        upload = request.FILES.get("file")
        if upload is None:
            raise PortalError("Send the file as multipart field 'file'.", fields={"file": "This field is required."})
        if upload.size > checks.max_upload_bytes():
            raise PayloadTooLarge(f"The upload is {upload.size} bytes, over the limit of {checks.max_upload_bytes()} bytes.")
        rows = services.project_files_upload(
            project=project, fileobj=upload, filename=upload.name or "", user=request.user,
            path=request.data.get("path") or None, extract=_flag(request.data.get("extract")),
            replace=_flag(request.data.get("replace")),
        )
        return Response({"count": len(rows), "files": ProjectFileSerializer(rows[:500], many=True).data}, status=201)

    @extend_schema(responses={200: bytes})
    @action(detail=True, methods=["get"], url_path="archive")
    def archive(self, request, pk=None):
        """All the project's files as one .tar.gz download."""
        project = self.get_object()
        tmp = tempfile.TemporaryFile()
        services.project_archive(project, tmp)
        tmp.seek(0)
        return attachment(tmp, f"{project.name}.tar.gz", content_type="application/gzip")

    @extend_schema(request=None, responses=RunDetailSerializer)
    @action(detail=True, methods=["post"], url_path="prepare", parser_classes=[JSONParser, FormParser])
    def prepare(self, request, pk=None):
        """Builds the project's Docker environment image as a run of kind `prepare` (`{"target": "docker"}`)."""
        project = self.get_object()
        target = request.data.get("target") if hasattr(request.data, "get") else None
        run = services.run_prepare(project=project, target=target or "docker", user=request.user)
        return Response(RunDetailSerializer(_detail(run)).data, status=201)


class TemplateViewSet(viewsets.GenericViewSet):
    """Project templates (`?search=churn`); create a project from one with POST /projects/ `{"template": slug}`."""

    serializer_class = TemplateSerializer
    pagination_class = Pagination
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        return Project.objects.none()

    def _templates(self, request):
        q = request.query_params.get("search") or request.query_params.get("q") or ""
        return [t for t in catalog.all_templates() if t.matches(q)]

    def list(self, request):
        page = self.paginate_queryset(self._templates(request))
        return self.get_paginated_response(TemplateSerializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        template = catalog.get_template(pk)
        if template is None:
            raise NotFound(f"No template '{pk}'.")
        return Response(TemplateSerializer(template).data)


# --- runs -----------------------------------------------------------------------------------------

def _detail(run: Run) -> Run:
    run = Run.objects.select_related("project", "created_by").annotate(outputs_count=Count("outputs")).get(pk=run.pk)
    selectors.attach_metric_summaries([run])
    selectors.attach_params_and_tags([run])
    return run


def find_project(request, ref: str, *, role: str = Role.READER) -> Project:
    """A project of the user's workspaces by id or name (the `workspace` given, else the current one first)."""
    ref = str(ref or "").strip()
    if not ref:
        raise PortalError("Name the project (its id or name).", fields={"project": "This field is required."})
    qs = Project.objects.filter(workspace__memberships__user=request.user).select_related("workspace")
    ws_ref = request.query_params.get("workspace") or (request.data.get("workspace") if hasattr(request.data, "get") else None)
    if ws_ref:
        workspace = workspace_from_request(request, role=Role.READER)
        qs = qs.filter(workspace=workspace)
    if is_uuid(ref):
        project = qs.filter(pk=ref).first()
    else:
        matches = list(qs.filter(name=ref)[:20])
        current, _ = current_workspace_and_role(request.user)
        matches.sort(key=lambda p: p.workspace_id != getattr(current, "pk", None))
        project = matches[0] if matches else None
    if project is None:
        raise NotFound(f"No project '{ref[:100]}' in your workspaces.", fields={"project": "Unknown project."})
    return project


class RunViewSet(WorkspaceScopedViewSet):
    """Experiment runs. List filters: project (id or name), script, status, user, target, kind, q,
    `metric=<name>&metric_gt=<n>` (also _gte/_lt/_lte/_eq); `?ordering=-created_at`, any column, or
    `-metric:<name>`. POST `{"project", "script", "args"?: [], "target"?}` submits a run."""

    queryset = Run.objects.all()
    serializer_class = RunSerializer
    name_field = None
    filter_backends: list = []  # filter_runs/order_runs below: metric filters and ordering need the summary table
    action_roles = {"cancel": Role.CONTRIBUTOR, "partial_update": Role.CONTRIBUTOR, "params": Role.CONTRIBUTOR}
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self):
        return selectors.runs_base(super().get_queryset())

    def filter_queryset(self, queryset):
        if self.action != "list":
            return queryset
        params = self.request.query_params
        workspace_ids = None
        if params.get("filter"):
            from workspaces.models import Membership

            workspace_ids = list(Membership.objects.filter(user=self.request.user).values_list("workspace_id", flat=True))
        return selectors.order_runs(selectors.filter_runs(queryset, params, workspace_ids), params.get("ordering"))

    @extend_schema(parameters=[OpenApiParameter(n, str) for n in (
        "project", "script", "status", "user", "target", "kind", "q", "metric", "metric_gt", "metric_gte", "metric_lt",
        "metric_lte", "metric_eq", "ordering", "workspace")] + [OpenApiParameter(
            "filter", str, description='e.g. metrics."DTree Accuracy" > 0.9 and params.max_depth = "4" and tags.team = "churn"')])
    def list(self, request, *args, **kwargs):
        ids = self.paginate_queryset(self.filter_queryset(self.get_queryset()).values_list("pk", flat=True))
        page = selectors.runs_in_order(ids)
        selectors.attach_metric_summaries(page)
        selectors.attach_params_and_tags(page)
        return self.get_paginated_response(RunSerializer(page, many=True).data)

    @extend_schema(request=RunAnnotateSerializer, responses=RunDetailSerializer)
    def partial_update(self, request, *args, **kwargs):
        """Sets or removes tags and replaces the note, during or after the run (contributor+)."""
        run = self.get_object()
        data = request.data if hasattr(request.data, "get") else {}
        unknown = sorted(set(data) - {"tags", "delete_tags", "note"})
        if unknown:
            raise PortalError(f"A run's {unknown[0]!r} cannot be changed: only tags, delete_tags and note can.",
                              fields={unknown[0]: "Not changeable."})
        delete = data.get("delete_tags") or []
        if not isinstance(delete, list):
            raise PortalError("delete_tags must be a list of tag keys.", fields={"delete_tags": "Send a list."})
        run = services.run_annotate(run=run, user=request.user, tags=data.get("tags"), delete_tags=delete, note=data.get("note"))
        return Response(RunDetailSerializer(_detail(run)).data)

    @extend_schema(request=RunParamsSerializer, responses=RunDetailSerializer)
    @action(detail=True, methods=["post"], url_path="params")
    def params(self, request, pk=None):
        """Logs params of the run (contributor+): `{"params": {"max_depth": 4}}`; a name logged before
        with another value is a 400 naming it (MLflow's rule), and nothing of the call is stored."""
        run = self.get_object()
        data = request.data if hasattr(request.data, "get") else {}
        services.run_add_params(run=run, params=data.get("params"), user=request.user)
        return Response(RunDetailSerializer(_detail(run)).data)

    def retrieve(self, request, *args, **kwargs):
        return Response(RunDetailSerializer(_detail(self.get_object())).data)

    @extend_schema(request=RunSubmitSerializer, responses={201: RunDetailSerializer})
    def create(self, request, *args, **kwargs):
        data = request.data if hasattr(request.data, "get") else {}
        project = find_project(request, data.get("project"))
        run = services.run_submit(project=project, script=str(data.get("script") or ""), args=data.get("args"),
                                  target=data.get("target") or None, user=request.user)
        return Response(RunDetailSerializer(_detail(run)).data, status=201)

    @extend_schema(parameters=[OpenApiParameter("offset", int)], responses={200: {"type": "object", "properties": {
        "text": {"type": "string"}, "offset": {"type": "integer"}, "done": {"type": "boolean"}, "status": {"type": "string"}}}})
    @action(detail=True, methods=["get"], url_path="log")
    def log(self, request, pk=None):
        """The live log from `offset` (0 at first, then the `offset` answered): `{text, offset, done, status}`."""
        run = self.get_object()
        page = selectors.run_log(run, parse_offset(request.query_params.get("offset")))
        return Response({**page, "status": run.status,
                         "duration_s": run.duration_s, "exit_code": run.exit_code, "status_reason": run.status_reason})

    @extend_schema(responses={200: bytes})
    def log_txt(self, request, pk=None):
        run = self.get_object()
        name = f"{run.project.name}-{run.number}-log.txt"
        response = StreamingHttpResponse((t.encode() for t in selectors.log_chunks(run)), content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["X-Content-Type-Options"] = "nosniff"
        return response

    @extend_schema(request=None, responses=RunDetailSerializer)
    @action(detail=True, methods=["post"], url_path="cancel")
    def cancel(self, request, pk=None):
        run = services.run_cancel(run=self.get_object(), user=request.user)
        return Response(RunDetailSerializer(_detail(run)).data)

    @extend_schema(responses=MetricPointSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="metrics")
    def metrics(self, request, pk=None):
        """Every metric point of the run (`?name=` to pick one), paginated, in logging order."""
        run = self.get_object()
        qs = run.metrics.order_by("name", "step", "id")
        if name := request.query_params.get("name"):
            qs = qs.filter(name=name)
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(MetricPointSerializer(page, many=True).data)

    @extend_schema(parameters=[
        OpenApiParameter("names", str, description="Comma-separated series names (default: every series logged with steps)"),
        OpenApiParameter("points", int, description="About how many points per series (default 1000, at most 5000)"),
        OpenApiParameter("min_step", int), OpenApiParameter("max_step", int)],
        responses={200: {"type": "object", "properties": {"series": {"type": "object"}}}})
    @action(detail=True, methods=["get"], url_path="series")
    def series(self, request, pk=None):
        """The run's metric series for charts: each downsampled on the server to about `points`
        points keeping its first, last, minimum and maximum (`sampled` says so); with `min_step` /
        `max_step`, that range again, at full resolution when it holds at most `points` points.
        `{"series": {name: {"steps": [...], "values": [...], "points": N, "sampled": bool}}}`."""
        run = self.get_object()
        params = request.query_params
        points = _int_param(params, "points", selectors.CHART_POINTS, low=10, high=selectors.MAX_CHART_POINTS)
        min_step = _int_param(params, "min_step", None)
        max_step = _int_param(params, "max_step", None)
        if min_step is not None and max_step is not None and min_step > max_step:
            raise PortalError("min_step must not be above max_step.", fields={"min_step": "Above max_step."})
        names = [n for n in params.get("names", "").split(",") if n] or None
        if names is None and min_step is None and max_step is None and points == selectors.CHART_POINTS \
                and not run.is_active:
            return gzipped_json(request, chart_cache.whole_series_gzip(run))
        data = selectors.chart_series(run, names=names, points=points, min_step=min_step, max_step=max_step)
        return compact_json(request, {"series": data, "min_step": min_step, "max_step": max_step, "points": points})

    @extend_schema(responses=RunOutputSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="outputs")
    def outputs(self, request, pk=None):
        run = self.get_object()
        qs = run.outputs.order_by("path")
        if q := request.query_params.get("q"):
            qs = qs.filter(path__icontains=q)
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(RunOutputSerializer(page, many=True).data)

    @extend_schema(responses={200: bytes})
    def output(self, request, pk=None, path: str = ""):
        """One output file as a streamed attachment (a leading `outputs/` in the path is accepted)."""
        run = self.get_object()
        path = path.rstrip("/")
        row = run.outputs.filter(path=path).first()
        if row is None and path.startswith("outputs/"):
            row = run.outputs.filter(path=path[len("outputs/"):]).first()
        if row is None:
            raise NotFound(f"Run {run} has no output '{path[:200]}'.")
        content_type = mimetypes.guess_type(row.path)[0] or "application/octet-stream"
        return attachment(open_file(row.storage_name), row.path.rsplit("/", 1)[-1], content_type=content_type)

    @extend_schema(responses={200: bytes})
    def outputs_zip(self, request, pk=None):
        run = self.get_object()
        tmp = tempfile.TemporaryFile()
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for row in run.outputs.order_by("path"):
                with open_file(row.storage_name) as src, archive.open(f"outputs/{row.path}", "w") as dst:
                    while chunk := src.read(1024 * 1024):
                        dst.write(chunk)
        tmp.seek(0)
        return attachment(tmp, f"{run.project.name}-{run.number}-outputs.zip", content_type="application/zip")

    @extend_schema(parameters=[OpenApiParameter("ids", str, description="Comma-separated run ids (2 to 10)")])
    @action(detail=False, methods=["get"], url_path="compare")
    def compare(self, request):
        """Runs side by side: properties, metrics (last values) and outputs, with `differs` marks."""
        runs = runs_to_compare(self.get_queryset(), request.query_params.get("ids", ""))
        data = selectors.compare(runs)
        return Response({
            "runs": RunSerializer(runs, many=True).data,
            "properties": data["properties"],
            "params": data["params"],
            "tags": data["tags"],
            "metrics": data["metrics"],
            "outputs": [{"path": row["path"], "differs": row["differs"],
                         "cells": [{"size": c.size, "sha256": c.sha256} if c else None for c in row["cells"]]}
                        for row in data["outputs"]],
            "series": data["series"],
            "parallel": data["parallel"],
        })


def compact_json(request, data) -> HttpResponse:
    """JSON without spaces, gzipped when the client accepts it: chart data is numbers by the
    thousand, about a third of the bytes once compressed (nothing secret is in it, so no BREACH)."""
    body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    response = HttpResponse(content_type="application/json")
    if len(body) > 1024 and "gzip" in request.META.get("HTTP_ACCEPT_ENCODING", ""):
        body = gzip.compress(body, compresslevel=1)  # level 1: a tenth of the time of 5, a few KB more
        response["Content-Encoding"] = "gzip"
    response["Vary"] = "Accept-Encoding"
    response.content = body
    return response


def gzipped_json(request, body: bytes) -> HttpResponse:
    """A JSON answer kept gzipped: sent as it is, or unpacked for a client that does not take gzip."""
    response = HttpResponse(content_type="application/json")
    if "gzip" in request.META.get("HTTP_ACCEPT_ENCODING", ""):
        response["Content-Encoding"] = "gzip"
    else:
        body = gzip.decompress(body)
    response["Vary"] = "Accept-Encoding"
    response.content = body
    return response


def _int_param(params, name: str, default, *, low: int | None = None, high: int | None = None):
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PortalError(f"{name} must be a whole number, not {raw[:40]!r}.", fields={name: "Not a whole number."}) from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise PortalError(f"{name} must be between {low} and {high}.", fields={name: f"Between {low} and {high}."})
    return value


def runs_to_compare(qs, ids: str) -> list[Run]:
    """The runs named by comma-separated ids, in that order; 2 to 10 of them, all visible to the user."""
    refs = [i.strip() for i in (ids or "").split(",") if i.strip()]
    if not 2 <= len(refs) <= 10:
        raise PortalError("Pick 2 to 10 runs to compare (?ids=<id>,<id>…).", fields={"ids": "Give 2 to 10 run ids."})
    bad = [r for r in refs if not is_uuid(r)]
    if bad:
        raise PortalError(f"{bad[0][:60]!r} is not a run id.", fields={"ids": "Not a run id."})
    found = {str(r.id): r for r in qs.filter(id__in=refs)}
    missing = [r for r in refs if r not in found]
    if missing:
        raise NotFound(f"No run {missing[0]} in your workspaces.")
    return [found[r] for r in dict.fromkeys(refs)]


# Paths that hold a file path or a dotted name live outside the router: its format-suffix routes
# would read "files/train.py" as "files/train" in format "py".
EXTRA_URLS = [
    path("projects/<str:pk>/files/<path:path>",
         ProjectViewSet.as_view({"get": "file", "put": "file", "delete": "file"}, parser_classes=[]), name="project-file"),
    path("runs/<str:pk>/log.txt", RunViewSet.as_view({"get": "log_txt"}), name="run-log-txt"),
    path("runs/<str:pk>/outputs.zip", RunViewSet.as_view({"get": "outputs_zip"}), name="run-outputs-zip"),
    path("runs/<str:pk>/outputs/<path:path>", RunViewSet.as_view({"get": "output"}), name="run-output-file"),
]

ROUTES = [
    ("projects", ProjectViewSet, "project"),
    ("templates", TemplateViewSet, "template"),
    ("runs", RunViewSet, "run"),
]
