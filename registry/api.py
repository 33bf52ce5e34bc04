"""REST API: /api/v1/models/, /api/v1/manifests/, /api/v1/images/.

Objects are addressed by id, by ``name:version``, or by name (its latest version); images also by
Docker tag. Viewsets stay thin: they parse, then call one service.
"""
from __future__ import annotations

import json
import uuid

import django_filters
from django.http import FileResponse, HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from core.api_base import CreateListRetrieveDestroyViewSet, WorkspaceScopedViewSet, workspace_from_request
from core.errors import NotFound, PortalError
from core.logs import parse_offset
from core.storage import open_file
from registry import model_scan, selectors, services
from registry.models import Image, Manifest, Model, ScanVerdict
from workspaces.models import Role, Workspace
from workspaces.selectors import current_workspace_and_role


# --- serializers (output) -------------------------------------------------------------------------

ScanSerializer = inline_serializer("ModelScan", {
    "verdict": serializers.CharField(help_text="safe, unknown, dangerous or not_scanned ('' before scans existed)"),
    "reason": serializers.CharField(), "reason_code": serializers.CharField(), "format": serializers.CharField(),
    "globals": serializers.ListField(child=serializers.DictField(), help_text="module, name, global, verdict, where, why, count"),
    "scanned_at": serializers.DateTimeField(allow_null=True), "needs_confirmation": serializers.BooleanField(),
    "accepted": serializers.BooleanField(), "accepted_by": serializers.CharField(allow_null=True),
    "accepted_at": serializers.DateTimeField(allow_null=True)})


class ModelSerializer(serializers.ModelSerializer):
    workspace = serializers.CharField(source="workspace.name", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    run = serializers.SerializerMethodField()
    project = serializers.SerializerMethodField()
    scan = serializers.SerializerMethodField()

    class Meta:
        model = Model
        fields = ["id", "workspace", "name", "version", "ref", "description", "tags", "framework", "framework_version",
                  "file_name", "size", "sha256", "scan", "run", "project", "source_path", "created_by", "created_at"]
        read_only_fields = fields

    @extend_schema_field(ScanSerializer)
    def get_scan(self, obj) -> dict:
        return {"verdict": obj.scan_verdict, "reason": obj.scan_reason, "reason_code": obj.scan_reason_code,
                "format": obj.scan_format, "globals": obj.scan_globals, "scanned_at": obj.scanned_at,
                "needs_confirmation": obj.scan_needs_confirmation and not obj.is_accepted,
                "accepted": obj.is_accepted, "accepted_by": getattr(obj.accepted_by, "username", None),
                "accepted_at": obj.accepted_at}

    def get_run(self, obj) -> str | None:
        value = getattr(obj, "run_id", None)
        return str(value) if value else None

    def get_project(self, obj) -> str | None:
        value = getattr(obj, "project_id", None)
        return str(value) if value else None


class ModelUpdateSerializer(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    tags = serializers.JSONField(required=False)


class ManifestModelSerializer(serializers.ModelSerializer):
    class Meta:
        model = Model
        fields = ["id", "name", "version", "ref", "file_name", "sha256", "size", "scan_verdict"]


class ManifestSerializer(serializers.ModelSerializer):
    workspace = serializers.CharField(source="workspace.name", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    models = serializers.SerializerMethodField()
    files = serializers.SerializerMethodField()

    class Meta:
        model = Manifest
        fields = ["id", "workspace", "name", "version", "ref", "runtime", "models", "files", "requirements",
                  "content_hash", "created_by", "created_at"]
        read_only_fields = fields

    def get_models(self, obj) -> list[dict]:
        models = [mm.model for mm in obj.manifest_models.select_related("model").order_by("position")]
        return ManifestModelSerializer(models, many=True).data

    def get_files(self, obj) -> dict:
        return {path: {"size": info["size"], "sha256": info["sha256"]} for path, info in sorted(obj.files.items())}


class ImageSerializer(serializers.ModelSerializer):
    workspace = serializers.CharField(source="workspace.name", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    manifest = serializers.CharField(source="manifest.ref", read_only=True)
    manifest_id = serializers.UUIDField(read_only=True)

    class Meta:
        model = Image
        fields = ["id", "workspace", "name", "version", "ref", "status", "tag", "image_id", "size", "build_seconds",
                  "labels", "manifest", "manifest_id", "error", "error_step", "error_log_tail", "started_at",
                  "finished_at", "created_by", "created_at"]
        read_only_fields = fields


# --- lookups --------------------------------------------------------------------------------------

class RefLookupMixin:
    """get_object by id, ``name:version`` or name (latest version), current workspace first.

    The router also matches ``<ref>.<format>`` (DRF's format suffixes), which would cut
    ``model.pkl`` into ``model`` + format ``pkl``: the suffix is glued back onto the ref (or file
    path) it was cut from, and only a suffix after a fixed path segment selects a renderer."""

    ref_by_tag = False

    def initial(self, request, *args, **kwargs):
        route = getattr(request.resolver_match, "route", "") or ""
        fmt = self.kwargs.get("format")
        for key in ("path", "pk"):
            if fmt and key in self.kwargs and f"(?P<{key}>[^/]+)\\.(?P<format>" in route:
                self.kwargs[key] = f"{self.kwargs[key]}.{fmt}"
                del self.kwargs["format"]
                break
        super().initial(request, *args, **kwargs)

    def get_format_suffix(self, **kwargs):
        return self.kwargs.get("format")

    def get_object(self):
        ref = self.kwargs[self.lookup_url_kwarg or self.lookup_field]
        current, _ = current_workspace_and_role(self.request.user)
        obj = selectors.find_by_ref(self.get_queryset(), ref, current_workspace_id=getattr(current, "pk", None),
                                    tag=self.ref_by_tag)
        if obj is None:
            raise NotFound(f"Not found: no {self.resource_label()} '{ref}' in your workspaces.")
        self.check_object_permissions(self.request, obj)
        return obj


def resolve_in_workspace(qs, workspace: Workspace, ref, *, field: str, what: str, tag: bool = False):
    """The object ``ref`` names inside ``workspace``; PortalError (400, naming the field) when none."""
    obj = selectors.find_by_ref(qs.filter(workspace=workspace), str(ref or ""), tag=tag)
    if obj is None:
        message = f"Unknown {what} {str(ref)[:80]!r} in workspace '{workspace.name}'."
        raise PortalError(message, fields={field: message})
    return obj


def _list_value(request, name: str) -> list:
    """A list from JSON (a list) or multipart (repeated keys, or one comma-separated value)."""
    if hasattr(request.data, "getlist"):
        values = request.data.getlist(name)
        if len(values) == 1 and isinstance(values[0], str):
            text = values[0].strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    raise PortalError(f"{name} is not a valid JSON list.", fields={name: "Not valid JSON."}) from None
            return [v.strip() for v in text.split(",") if v.strip()]
        return values
    value = request.data.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise PortalError(f"{name} must be a list.", fields={name: "Expected a list."})
    return value


def _uploaded(request, name: str, *, required: bool):
    upload = request.FILES.get(name)
    if upload is None and required:
        raise PortalError(f"Upload the file as '{name}' (multipart/form-data).", fields={name: "This file is required."})
    return upload


# --- models ---------------------------------------------------------------------------------------

class ModelFilter(django_filters.FilterSet):
    run = django_filters.UUIDFilter(field_name="run_id")
    project = django_filters.CharFilter(method="filter_project", help_text="Project id or name")
    scan = django_filters.ChoiceFilter(field_name="scan_verdict", choices=ScanVerdict.choices,
                                       help_text="Only versions with this scan verdict")

    class Meta:
        model = Model
        fields = ["name", "framework", "version", "run", "project", "scan"]

    def filter_project(self, qs, name, value):
        try:
            return qs.filter(project_id=uuid.UUID(value))
        except ValueError:
            return qs.filter(project__name=value)


class ModelViewSet(RefLookupMixin, WorkspaceScopedViewSet):
    """Registered model versions. POST multipart (``file``, ``name``, ``description``, ``tags`` as a
    JSON object, ``framework``) uploads; POST JSON ``{"name", "run", "path"}`` registers a run's output."""

    queryset = Model.objects.select_related("workspace", "created_by", "accepted_by")
    serializer_class = ModelSerializer
    filterset_class = ModelFilter
    search_fields = ["name", "description", "file_name", "framework"]
    ordering_fields = ["name", "version", "created_at", "size", "framework"]
    ordering = ["name", "-version"]
    parser_classes = [JSONParser, MultiPartParser, FormParser]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    @extend_schema(request={"multipart/form-data": inline_serializer("ModelUpload", {
        "file": serializers.FileField(), "name": serializers.CharField(), "description": serializers.CharField(required=False),
        "tags": serializers.JSONField(required=False), "framework": serializers.CharField(required=False),
        "workspace": serializers.CharField(required=False)}),
        "application/json": inline_serializer("ModelFromRun", {
            "name": serializers.CharField(), "run": serializers.UUIDField(), "path": serializers.CharField(),
            "description": serializers.CharField(required=False), "tags": serializers.JSONField(required=False),
            "framework": serializers.CharField(required=False)})},
        responses={201: ModelSerializer})
    def create(self, request, *args, **kwargs):
        workspace = workspace_from_request(request, role=Role.CONTRIBUTOR)
        data = request.data
        common = {"name": data.get("name", ""), "user": request.user, "description": data.get("description", ""),
                  "tags": data.get("tags"), "framework": data.get("framework", "")}
        upload = request.FILES.get("file")
        if upload is not None:
            model = services.model_register_upload(workspace=workspace, fileobj=upload, filename=upload.name, **common)
        elif data.get("run"):
            model = services.model_register_from_run(
                run=self._run(workspace, data.get("run")), path=str(data.get("path") or ""), **common
            )
        else:
            raise PortalError(
                "Send a model file (multipart 'file') or a run's output ({\"run\": <run id>, \"path\": \"model.pkl\"}).",
                fields={"file": "Upload a file or name a run output."},
            )
        return Response(ModelSerializer(model).data, status=status.HTTP_201_CREATED)

    @staticmethod
    def _run(workspace: Workspace, ref):
        from runs.models import Run

        try:
            run = Run.objects.filter(workspace=workspace, pk=uuid.UUID(str(ref))).select_related("project").first()
        except ValueError:  # not an id: matches nothing
            run = None
        if run is None:
            raise PortalError(f"Unknown run {str(ref)[:60]!r} in workspace '{workspace.name}'.", fields={"run": "Unknown run."})
        return run

    @extend_schema(request=ModelUpdateSerializer, responses=ModelSerializer)
    def partial_update(self, request, *args, **kwargs):
        model = self.get_object()
        unknown = sorted(set(request.data) - {"description", "tags"})
        if unknown:
            raise PortalError(f"Only description and tags can change; not {', '.join(unknown)}.",
                              fields={k: "Read-only." for k in unknown})
        model = services.model_update(model=model, user=request.user, description=request.data.get("description"),
                                      tags=request.data.get("tags"))
        return Response(ModelSerializer(model).data)

    def update(self, request, *args, **kwargs):
        return self.partial_update(request, *args, **kwargs)

    def perform_destroy(self, instance):
        services.model_delete(model=instance, user=self.request.user)

    @extend_schema(request=None, responses=ModelSerializer)
    @action(detail=True, methods=["post", "delete"])
    def accept(self, request, **kwargs):
        """POST: a workspace owner accepts this version although its scan found it dangerous, unknown or
        not fully readable; manifests may then bundle it (recorded in the activity log). DELETE
        withdraws the acceptance. Contributors get 403."""
        model = self.get_object()
        if request.method == "DELETE":
            model = model_scan.model_accept_withdraw(model=model, user=request.user)
        else:
            model = model_scan.model_accept(model=model, user=request.user)
        return Response(ModelSerializer(self.get_queryset().get(pk=model.pk)).data)

    @extend_schema(request=inline_serializer("ModelAliasSet", {
        "alias": serializers.CharField(), "version": serializers.IntegerField(required=False),
        "remove": serializers.BooleanField(required=False), "reason": serializers.CharField(required=False)}),
        parameters=[OpenApiParameter("alias", str, description="Only this alias's history, e.g. production")],
        responses={200: inline_serializer("ModelAliases", {
            "name": serializers.CharField(), "aliases": serializers.ListField(child=serializers.DictField()),
            "history": serializers.ListField(child=serializers.DictField())})})
    @action(detail=True, methods=["get", "post"])
    def aliases(self, request, **kwargs):
        """GET: the model's aliases now and every period each pointed at a version, newest first
        ("which version was in production when": ``?alias=production``). POST ``{"alias",
        "version"?}`` points the alias at that version (default: this one); ``"remove": true`` drops it."""
        from registry import aliases

        model = self.get_object()
        if request.method == "POST":
            self.check_object_permissions(request, model)
            data = request.data if hasattr(request.data, "get") else {}
            if str(data.get("remove", "")).lower() in ("1", "true", "yes"):
                aliases.model_alias_remove(workspace=model.workspace, model_name=model.name, alias=data.get("alias"),
                                           user=request.user)
            else:
                version = data.get("version")
                if version not in (None, ""):
                    target = Model.objects.filter(workspace=model.workspace, name=model.name,
                                                  version=str(version).strip() if str(version).strip().isdigit() else -1).first()
                    if target is None:
                        versions = ", ".join(str(v) for v in Model.objects.filter(workspace=model.workspace, name=model.name)
                                             .values_list("version", flat=True)[:20])
                        raise PortalError(f"Model {model.name} has no version {str(version)[:20]!r}; its versions are {versions}.",
                                          fields={"version": "Unknown version."})
                    model = target
                aliases.model_alias_set(model=model, alias=data.get("alias"), user=request.user,
                                        reason=str(data.get("reason") or "set by hand"))
        alias = request.query_params.get("alias") or None
        return Response({"name": model.name, "aliases": aliases.aliases_of(model.workspace_id, model.name),
                         "history": aliases.alias_history(model.workspace_id, model.name, alias)})

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(detail=True, methods=["get"])
    def download(self, request, **kwargs):
        """The model file, streamed as an attachment named after its file name."""
        model = self.get_object()
        return model_file_response(model)


def model_file_response(model: Model) -> FileResponse:
    response = FileResponse(open_file(model.file), as_attachment=True, filename=model.file_name,
                            content_type="application/octet-stream")
    response["Content-Length"] = str(model.size)
    response["X-Checksum-SHA256"] = model.sha256
    return response


# --- manifests ------------------------------------------------------------------------------------

class ManifestViewSet(RefLookupMixin, CreateListRetrieveDestroyViewSet):
    """Immutable manifests. POST multipart (``name``, ``models``, ``score_file``, ``schema_file``,
    ``requirements_file``?, ``runtime``) or JSON from a project's files (``{"name", "models",
    "project", "score", "schema", "requirements"?}``)."""

    queryset = Manifest.objects.select_related("workspace", "created_by")
    serializer_class = ManifestSerializer
    filterset_fields = ["name", "version", "runtime", "content_hash"]
    search_fields = ["name", "content_hash"]
    ordering_fields = ["name", "version", "created_at"]
    ordering = ["name", "-version"]
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(request={"multipart/form-data": inline_serializer("ManifestUpload", {
        "name": serializers.CharField(), "models": serializers.ListField(child=serializers.CharField()),
        "score_file": serializers.FileField(), "schema_file": serializers.FileField(),
        "requirements_file": serializers.FileField(required=False), "runtime": serializers.CharField(required=False),
        "confirm_unknown": serializers.BooleanField(required=False)}),
        "application/json": inline_serializer("ManifestFromProject", {
            "name": serializers.CharField(), "models": serializers.ListField(child=serializers.CharField()),
            "project": serializers.CharField(), "score": serializers.CharField(), "schema": serializers.CharField(),
            "requirements": serializers.CharField(required=False), "confirm_unknown": serializers.BooleanField(required=False)})},
        responses={201: ManifestSerializer})
    def create(self, request, *args, **kwargs):
        workspace = workspace_from_request(request, role=Role.CONTRIBUTOR)
        data = request.data
        refs = _list_value(request, "models")
        if not refs:
            raise PortalError("A manifest needs at least one model version: send 'models', e.g. [\"model.pkl:1\"].",
                              fields={"models": "Choose one or more model versions."})
        models = [resolve_in_workspace(Model.objects.all(), workspace, ref, field="models", what="model") for ref in refs]
        runtime = data.get("runtime") or Manifest.Runtime.PYTHON
        confirm = model_scan.parse_flag(data.get("confirm_unknown"))
        if request.FILES:
            score = _uploaded(request, "score_file", required=True)
            schema = _uploaded(request, "schema_file", required=True)
            requirements = _uploaded(request, "requirements_file", required=False)
            manifest = services.manifest_create(
                workspace=workspace, name=data.get("name", ""), models=models, score=score.read(), schema=schema.read(),
                requirements=requirements.read() if requirements is not None else None, user=request.user, runtime=runtime,
                confirm_unknown=confirm,
            )
        elif data.get("project"):
            requirements = data.get("requirements")
            manifest = services.manifest_create_from_project(
                workspace=workspace, name=data.get("name", ""), models=models, project_ref=str(data.get("project")),
                score_path=data.get("score") or Manifest.SCORE, schema_path=data.get("schema") or Manifest.SCHEMA,
                requirements_path=requirements, user=request.user, runtime=runtime, confirm_unknown=confirm,
            )
        else:
            raise PortalError(
                "Send score_file and schema_file (multipart), or a project and the paths of its files (JSON).",
                fields={"score_file": "Upload score.py or name a project."},
            )
        return Response(ManifestSerializer(manifest).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        services.manifest_delete(manifest=instance, user=self.request.user)

    @extend_schema(responses={(200, "text/plain"): str})
    @action(detail=True, methods=["get"], url_path=r"files/(?P<path>[^/]+)")
    def files(self, request, **kwargs):
        """One file of the manifest (score.py, service_schema.json, requirements.txt) as text."""
        manifest = self.get_object()
        path = self.kwargs["path"]
        data = services.manifest_file(manifest, path)
        content_type = "application/json" if path.endswith(".json") else "text/plain; charset=utf-8"
        response = HttpResponse(data, content_type=content_type)
        response["X-Content-Type-Options"] = "nosniff"
        return response


# --- images ---------------------------------------------------------------------------------------

class ImageCreateSerializer(serializers.Serializer):
    manifest = serializers.CharField()
    name = serializers.CharField(required=False, allow_blank=True)


LogSerializer = inline_serializer("ImageLog", {
    "text": serializers.CharField(), "offset": serializers.IntegerField(), "done": serializers.BooleanField(),
    "status": serializers.CharField()})
UsageSerializer = inline_serializer("ImageUsage", {
    "docker_run": serializers.CharField(), "curl": serializers.CharField(), "sample_body": serializers.JSONField(),
    "scoring_path": serializers.CharField()})


class ImageViewSet(RefLookupMixin, CreateListRetrieveDestroyViewSet):
    """Docker images of manifests. POST ``{"manifest": ref, "name"?}`` queues a build (201)."""

    queryset = Image.objects.select_related("workspace", "created_by", "manifest")
    serializer_class = ImageSerializer
    filterset_fields = ["name", "version", "status", "tag", "manifest"]
    search_fields = ["name", "tag", "manifest__name"]
    ordering_fields = ["name", "version", "created_at", "status", "size", "build_seconds"]
    ordering = ["-created_at"]
    ref_by_tag = True
    # A tag (mlportal/<ws>/<name>:<version>, or mlportal/<ws>-<name>:<version> before) holds one or two
    # '/'; the ':<n>' keeps 'x/log' from matching.
    lookup_value_regex = r"(?:mlportal/[^/:]+(?:/[^/:]+)?:\d+|[^/]+)"

    @extend_schema(request=ImageCreateSerializer, responses={201: ImageSerializer})
    def create(self, request, *args, **kwargs):
        workspace = workspace_from_request(request, role=Role.CONTRIBUTOR)
        body = ImageCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        manifest = resolve_in_workspace(Manifest.objects.all(), workspace, body.validated_data["manifest"],
                                        field="manifest", what="manifest")
        image = services.image_create(manifest=manifest, user=request.user, name=body.validated_data.get("name") or None)
        return Response(ImageSerializer(image).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        services.image_delete(image=instance, user=self.request.user)

    @extend_schema(parameters=[OpenApiParameter("offset", int)], responses=LogSerializer)
    @action(detail=True, methods=["get"])
    def log(self, request, **kwargs):
        """The build log after chunk ?offset=N (for MLPortal.tailLog; core.logs)."""
        image = self.get_object()
        return Response(selectors.image_log(image, parse_offset(request.query_params.get("offset"))))

    @extend_schema(responses=UsageSerializer)
    @action(detail=True, methods=["get"])
    def usage(self, request, **kwargs):
        """How to run the image with Docker and call it: docker run line, curl sample, body."""
        return Response(selectors.image_usage(self.get_object()))


ROUTES = [
    # api-* basenames: the pages own the plain names (model-list, image-detail, …).
    ("models", ModelViewSet, "api-model"),
    ("manifests", ManifestViewSet, "api-manifest"),
    ("images", ImageViewSet, "api-image"),
]
