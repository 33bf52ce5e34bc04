"""REST API: /api/v1/environments/ and /api/v1/services/, and the portal's scoring proxy
``POST /api/v1/services/<name or id>/score`` (authenticated by a service key, not a user token).

Viewsets stay thin: they parse, then call one service or selector. Longer than 500 lines on
purpose: environments, services (with their actions: update, rollback, scale, keys, traffic,
limits, logs, metrics, export) and the scoring view share their serializers and the one error
shape of the scoring path; each action is a few lines.
"""
from __future__ import annotations

import django_filters
from django.conf import settings
from django.http import HttpResponse
from django.urls import re_path
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import permissions, serializers, status
from rest_framework.decorators import action
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_base import CreateListRetrieveDestroyViewSet, workspace_from_request
from core.errors import Conflict, NotFound, PortalError, error_body
from deployments import autoscaling, kubernetes, proxy, selectors, services
from deployments.models import Environment, Service, ServiceEvent, ServiceRevision
from monitoring.api import ServiceDataActions
from registry.model_scan import parse_flag
from workspaces.models import Role

# --- environments ---------------------------------------------------------------------------------


class EnvironmentSerializer(serializers.ModelSerializer):
    workspace = serializers.CharField(source="workspace.name", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    engine = serializers.SerializerMethodField()
    services = serializers.SerializerMethodField()
    active = serializers.SerializerMethodField()
    swarm = serializers.SerializerMethodField()

    class Meta:
        model = Environment
        fields = ["id", "workspace", "name", "kind", "engine_url", "publish_address", "labels", "description", "engine",
                  "swarm", "services", "active", "created_by", "created_at"]
        read_only_fields = fields

    def get_engine(self, obj) -> dict:
        return selectors.engine_status(obj)

    def get_services(self, obj) -> list[dict]:
        return [{"id": str(s.pk), "name": s.name, "status": s.status} for s in selectors.services_in(obj)[:100]]

    def get_swarm(self, obj) -> dict | None:
        """A cluster environment's swarm as its engine says (state, manager, nodes); None for local ones."""
        return selectors.swarm_of(obj)

    def get_active(self, obj) -> bool:
        request = self.context.get("request")
        active = selectors.active_environment(request.user, obj.workspace) if request else None
        return active is not None and active.pk == obj.pk


class EnvironmentWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    kind = serializers.CharField(required=False, default=Environment.Kind.LOCAL)
    engine_url = serializers.CharField(required=False, allow_blank=True, default="")
    publish_address = serializers.CharField(required=False, allow_blank=True, default="")
    labels = serializers.JSONField(required=False)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    workspace = serializers.CharField(required=False)
    init_swarm = serializers.BooleanField(required=False, default=False,
                                          help_text="cluster: make an engine in no swarm a single-node swarm manager first")


class EnvironmentUpdateSerializer(serializers.Serializer):
    engine_url = serializers.CharField(required=False, allow_blank=True)
    publish_address = serializers.CharField(required=False, allow_blank=True)
    labels = serializers.JSONField(required=False)
    description = serializers.CharField(required=False, allow_blank=True)


class EnvironmentViewSet(CreateListRetrieveDestroyViewSet):
    """Environments: where services run (the lab's ``az ml env setup / list / show / set``).
    ``GET active/`` is the caller's active one; ``POST {ref}/activate/`` sets it."""

    queryset = Environment.objects.select_related("workspace", "created_by")
    serializer_class = EnvironmentSerializer
    filterset_fields = ["name", "kind"]
    search_fields = ["name", "description", "engine_url"]
    ordering_fields = ["name", "created_at", "kind"]
    ordering = ["name"]
    action_roles = {"activate": Role.READER}

    @extend_schema(request=EnvironmentWriteSerializer, responses={201: EnvironmentSerializer})
    def create(self, request, *args, **kwargs):
        workspace = workspace_from_request(request, role=Role.CONTRIBUTOR)
        body = EnvironmentWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        environment = services.environment_create(
            workspace=workspace, name=data["name"], user=request.user, kind=data["kind"], engine_url=data["engine_url"],
            publish_address=data["publish_address"], labels=data.get("labels"), description=data["description"],
            init_swarm=data["init_swarm"],
        )
        body = self.get_serializer(environment).data
        if getattr(environment, "notice", None):
            body["notice"] = environment.notice
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=EnvironmentUpdateSerializer, responses=EnvironmentSerializer)
    def partial_update(self, request, *args, **kwargs):
        """Changes description, labels, engine_url or publish_address (the last two only while no
        service runs in it)."""
        environment = self.get_object()
        data = request.data.dict() if hasattr(request.data, "dict") else request.data  # a form's QueryDict
        if not isinstance(data, dict):
            raise PortalError("Send a JSON object with the fields to change.")
        environment = services.environment_update(environment=environment, user=request.user, changes=dict(data))
        return Response(self.get_serializer(environment).data)

    def update(self, request, *args, **kwargs):
        return self.partial_update(request, *args, **kwargs)

    def perform_destroy(self, instance):
        services.environment_delete(environment=instance, user=self.request.user)

    @extend_schema(responses=EnvironmentSerializer)
    @action(detail=False, methods=["get"])
    def active(self, request):
        """The caller's active environment in the current (or ?workspace=) workspace."""
        workspace = workspace_from_request(request, role=Role.READER)
        environment = selectors.active_environment(request.user, workspace)
        if environment is None:
            raise NotFound(f"No active environment in workspace '{workspace.name}': set one with "
                           "POST /api/v1/environments/<name>/activate/ (mlportal env set -n <name>).", code="no_active_environment")
        return Response(self.get_serializer(environment).data)

    @extend_schema(request=None, responses=EnvironmentSerializer)
    @action(detail=True, methods=["post"])
    def activate(self, request, **kwargs):
        environment = self.get_object()
        services.environment_activate(environment=environment, user=request.user)
        return Response(self.get_serializer(environment).data)


# --- services -------------------------------------------------------------------------------------

class ReplicaSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    container_id = serializers.CharField()
    host = serializers.CharField()
    port = serializers.IntegerField()
    url = serializers.CharField()
    restarts = serializers.IntegerField()
    node = serializers.CharField(help_text="The Swarm node of its task (cluster environments)")
    task_id = serializers.CharField(help_text="Its Swarm task (cluster environments)")
    started_at = serializers.DateTimeField()
    revision = serializers.IntegerField(source="revision.number", default=None, help_text="Empty: the live revision")
    # What the worker side last saw (the deploy, then the reconciler), never asked for this read.
    state = serializers.CharField(help_text="The container's engine state when checked; empty: not checked yet")
    ready = serializers.BooleanField(help_text="Whether it answered /ready when checked")
    state_error = serializers.CharField(allow_blank=True)
    checked_at = serializers.DateTimeField(allow_null=True)
    checked_seconds_ago = serializers.SerializerMethodField()

    def get_checked_seconds_ago(self, obj) -> int | None:
        return selectors.seconds_since(obj.checked_at)


class RevisionSerializer(serializers.ModelSerializer):
    image = serializers.CharField(source="image_ref")
    image_id = serializers.UUIDField(allow_null=True)
    created_by = serializers.CharField(source="created_by.username", default=None)

    class Meta:
        model = ServiceRevision
        fields = ["number", "image", "image_id", "reason", "role", "created_by", "started_at", "ended_at"]


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = ServiceEvent
        fields = ["level", "message", "created_at"]


class ServiceSerializer(serializers.ModelSerializer):
    workspace = serializers.CharField(source="workspace.name", read_only=True)
    environment = serializers.CharField(source="environment.name", read_only=True)
    environment_id = serializers.UUIDField(read_only=True)
    image = serializers.CharField(source="image.ref", read_only=True)
    image_id = serializers.UUIDField(read_only=True)
    image_tag = serializers.CharField(source="image.tag", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    scoring_url = serializers.SerializerMethodField()
    containers = serializers.SerializerMethodField()
    steps = serializers.SerializerMethodField()
    revisions = serializers.SerializerMethodField()
    events = serializers.SerializerMethodField()
    capture = serializers.SerializerMethodField()
    engine = serializers.SerializerMethodField(help_text="What the worker side last saw of the environment's engine")
    autoscale = serializers.SerializerMethodField()
    environment_kind = serializers.CharField(source="environment.kind", read_only=True)
    request_timeout = serializers.SerializerMethodField(
        help_text="Seconds a scoring request may run in a replica (its own request_timeout_s, else the portal's; 0: none)")

    class Meta:
        model = Service
        fields = ["id", "workspace", "name", "status", "environment", "environment_id", "environment_kind", "image", "image_id",
                  "image_tag", "replicas", "cpus", "memory_mb", "request_timeout_s", "request_timeout", "autoscale", "error", "last_update_error", "pending", "rollout",
                  "scoring_url", "containers", "steps", "revisions", "events", "capture", "engine", "created_by", "created_at", "updated_at"]
        read_only_fields = fields

    def get_request_timeout(self, obj) -> float:
        from deployments.checks import effective_request_timeout

        return effective_request_timeout(obj)

    def get_scoring_url(self, obj) -> str:
        request = self.context.get("request")
        path = f"/api/v1/services/{obj.name}/score"
        return request.build_absolute_uri(path) if request else path

    def get_containers(self, obj) -> list[dict]:
        return ReplicaSerializer(obj.replica_set.select_related("revision").order_by("number"), many=True).data

    def get_engine(self, obj) -> dict:
        return selectors.engine_status(obj.environment)

    def get_steps(self, obj) -> list[dict]:
        return selectors.service_steps(obj)

    def get_revisions(self, obj) -> list[dict]:
        return RevisionSerializer(obj.revisions.select_related("image", "created_by")[:50], many=True).data

    def get_autoscale(self, obj) -> dict:
        return obj.autoscale

    def get_capture(self, obj) -> dict:
        from monitoring.services import capture_of

        return capture_of(obj)

    def get_events(self, obj) -> list[dict]:
        if not self.context.get("detail"):
            return []
        return EventSerializer(obj.events.all()[:50], many=True).data


class ServiceFilter(django_filters.FilterSet):
    environment = django_filters.CharFilter(method="filter_environment", help_text="Environment id or name")

    class Meta:
        model = Service
        fields = ["name", "status", "environment"]

    def filter_environment(self, qs, name, value):
        return selectors.filter_services(qs, environment=value)


class ServiceCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    image = serializers.CharField()
    environment = serializers.CharField(required=False, allow_blank=True)
    replicas = serializers.JSONField(required=False)
    cpus = serializers.JSONField(required=False)
    memory_mb = serializers.JSONField(required=False)
    request_timeout_s = serializers.JSONField(required=False, help_text="Seconds a scoring request may run (default: the portal's)")
    workspace = serializers.CharField(required=False)
    autoscale_enabled = serializers.JSONField(required=False)
    autoscale_min_replicas = serializers.JSONField(required=False)
    autoscale_max_replicas = serializers.JSONField(required=False)
    autoscale_target_utilization = serializers.JSONField(required=False)
    autoscale_refresh_seconds = serializers.JSONField(required=False)
    autoscale_stable_seconds = serializers.JSONField(required=False)


AUTOSCALE_FIELDS = {"autoscale_enabled": serializers.BooleanField(required=False),
                    "autoscale_min_replicas": serializers.IntegerField(required=False),
                    "autoscale_max_replicas": serializers.IntegerField(required=False),
                    "autoscale_target_utilization": serializers.IntegerField(required=False),
                    "autoscale_refresh_seconds": serializers.IntegerField(required=False),
                    "autoscale_stable_seconds": serializers.IntegerField(required=False)}
AutoscaleSerializer = inline_serializer("ServiceAutoscale", dict(AUTOSCALE_FIELDS))


RealtimeSerializer = inline_serializer("ServiceCreateRealtime", {
    "name": serializers.CharField(), "model_file": serializers.FileField(), "score_file": serializers.FileField(),
    "schema_file": serializers.FileField(), "requirements_file": serializers.FileField(required=False),
    "runtime": serializers.CharField(required=False), "model_name": serializers.CharField(required=False),
    "environment": serializers.CharField(required=False), "replicas": serializers.IntegerField(required=False),
    "cpus": serializers.FloatField(required=False), "memory_mb": serializers.IntegerField(required=False),
    "request_timeout_s": serializers.FloatField(required=False),
    "workspace": serializers.CharField(required=False), "confirm_unknown": serializers.BooleanField(required=False),
    **AUTOSCALE_FIELDS})
KeysSerializer = inline_serializer("ServiceKeys", {"primary": serializers.CharField(), "secondary": serializers.CharField()})
UsageSerializer = inline_serializer("ServiceUsage", {
    "scoring_url": serializers.CharField(), "container_url": serializers.CharField(allow_null=True),
    "swagger_url": serializers.CharField(allow_null=True), "headers": serializers.DictField(),
    "sample_body": serializers.JSONField(), "curl": serializers.CharField(), "cli": serializers.CharField()})
LogsSerializer = inline_serializer("ServiceLogs", {
    "text": serializers.CharField(), "replicas": serializers.ListField(child=serializers.DictField()),
    "done": serializers.BooleanField()})


class _IgnoreFormatParam(DefaultContentNegotiation):
    """``?format=`` names the export's format here, not a DRF renderer: errors still answer JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def _value(request, name: str, default=None):
    value = request.data.get(name, default) if hasattr(request.data, "get") else default
    return default if value in (None, "") else value


class ServiceViewSet(ServiceDataActions, CreateListRetrieveDestroyViewSet):
    """Realtime services. POST ``{"name", "image", "environment"?, "replicas"?, "cpus"?, "memory_mb"?}``
    deploys a built image; ``POST create-realtime/`` (multipart) is the lab's one-shot
    ``service create realtime``. DELETE answers 202: the service goes ``deleting``, then away."""

    queryset = Service.objects.select_related("workspace", "environment", "image__manifest", "created_by")
    serializer_class = ServiceSerializer
    filterset_class = ServiceFilter
    search_fields = ["name", "image__name"]
    ordering_fields = ["name", "status", "created_at", "updated_at", "replicas"]
    ordering = ["name"]
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "detail": self.action not in ("list", "create", "create_realtime")}

    def _answer(self, service: Service, *, code: int = status.HTTP_200_OK, notice: str | None = None) -> Response:
        service = self.get_queryset().get(pk=service.pk)
        data = self.get_serializer(service).data
        if notice:
            data["notice"] = notice
        return Response(data, status=code)

    @extend_schema(request=ServiceCreateSerializer, responses={201: ServiceSerializer})
    def create(self, request, *args, **kwargs):
        from registry.api import resolve_in_workspace
        from registry.models import Image

        workspace = workspace_from_request(request, role=Role.CONTRIBUTOR)
        body = ServiceCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        image = resolve_in_workspace(Image.objects.all(), workspace, data["image"], field="image", what="image", tag=True)
        service, notice = autoscaling.create_autoscaled(lambda replicas: services.service_create(
            workspace=workspace, name=data["name"], image=image, user=request.user, environment=data.get("environment") or None,
            replicas=replicas, cpus=data.get("cpus", 1.0), memory_mb=data.get("memory_mb", 1024),
            request_timeout_s=data.get("request_timeout_s"),
        ), given=autoscaling.given_in(data), replicas=data.get("replicas"), user=request.user)
        return self._answer(service, code=status.HTTP_201_CREATED, notice=notice)

    @extend_schema(request={"multipart/form-data": RealtimeSerializer}, responses={201: ServiceSerializer})
    @action(detail=False, methods=["post"], url_path="create-realtime")
    def create_realtime(self, request):
        """Register the model, create the manifest and the image, and start the service: in one go."""
        workspace = workspace_from_request(request, role=Role.CONTRIBUTOR)
        files = {}
        for field, required in (("model_file", True), ("score_file", True), ("schema_file", True), ("requirements_file", False)):
            upload = request.FILES.get(field)
            if upload is None and required:
                raise PortalError(f"Upload the file as '{field}' (multipart/form-data).", fields={field: "This file is required."})
            files[field] = upload
        model = files["model_file"]
        requirements = files["requirements_file"]
        service, notice = autoscaling.create_autoscaled(
            lambda replicas: self._create_realtime(request, workspace, files, model, requirements, replicas),
            given=autoscaling.given_in(request.data), replicas=_value(request, "replicas"), user=request.user)
        return self._answer(service, code=status.HTTP_201_CREATED, notice=notice)

    def _create_realtime(self, request, workspace, files, model, requirements, replicas):
        return services.service_create_realtime(
            workspace=workspace, name=_value(request, "name", ""), model_file=model, model_filename=model.name,
            score=files["score_file"].read(), schema=files["schema_file"].read(),
            requirements=requirements.read() if requirements is not None else None, user=request.user,
            runtime=_value(request, "runtime", "python"), model_name=_value(request, "model_name"),
            environment=_value(request, "environment"), replicas=replicas,
            cpus=_value(request, "cpus", 1.0), memory_mb=_value(request, "memory_mb", 1024),
            request_timeout_s=_value(request, "request_timeout_s"),
            confirm_unknown=parse_flag(_value(request, "confirm_unknown")),
        )

    @extend_schema(responses={202: ServiceSerializer})
    def destroy(self, request, *args, **kwargs):
        service = services.service_delete(service=self.get_object(), user=request.user)
        return Response(self.get_serializer(service).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=KeysSerializer)
    def partial_update(self, request, *args, **kwargs):
        """PATCH ``{"capture": {"mode": "off|inputs|predictions|both", "percent": 0-100}}``: the data
        capture switch; running replicas get it with the worker's next pull (no redeploy).
        PATCH ``{"request_timeout_s": 5}`` (``null``: the portal's default) sets how long one
        scoring request may run: the replicas restart with it, one set at a time (202)."""
        from monitoring.services import set_capture

        service = self.get_object()
        data = request.data if isinstance(request.data, dict) else None
        allowed = {"capture", "request_timeout_s"}
        if not data or set(data) - allowed or len(data) != 1:
            raise PortalError("PATCH a service with {\"capture\": {\"mode\", \"percent\"}} or {\"request_timeout_s\": "
                              "seconds}, one at a time; other changes are POST update/, scale/ or rollback/.",
                              fields={k: "cannot be changed here" for k in (data or {}) if k not in allowed})
        if "request_timeout_s" in data:
            service = services.service_set_request_timeout(service=service, value=data["request_timeout_s"], user=request.user)
            return self._answer(service, code=status.HTTP_202_ACCEPTED)
        set_capture(service=service, value=data["capture"], user=request.user)
        return self._answer(service)

    @action(detail=True, methods=["get"])
    def keys(self, request, **kwargs):
        """The service's primary and secondary keys (members of its workspace only)."""
        service = self.get_object()
        return Response({"primary": service.primary_key, "secondary": service.secondary_key})

    @extend_schema(request=inline_serializer("RegenerateKey", {"key": serializers.ChoiceField(["primary", "secondary"])}),
                   responses={202: ServiceSerializer})
    @action(detail=True, methods=["post"], url_path="regenerate-key")
    def regenerate_key(self, request, **kwargs):
        service = services.service_regenerate_key(service=self.get_object(), which=_value(request, "key"), user=request.user)
        return self._answer(service, code=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=UsageSerializer)
    @action(detail=True, methods=["get"])
    def usage(self, request, **kwargs):
        """How to call it: scoring URL, container URL, swagger, headers, sample body, curl, CLI."""
        return Response(selectors.service_usage(self.get_object(), portal_url=request.build_absolute_uri("/")))

    @extend_schema(parameters=[OpenApiParameter("tail", int)], responses=LogsSerializer)
    @action(detail=True, methods=["get"])
    def logs(self, request, **kwargs):
        """The last ?tail=N (default 200, at most 5000) lines of each replica's container."""
        try:
            tail = int(request.query_params.get("tail", 200))
        except ValueError:
            raise PortalError("tail must be a whole number of lines.", fields={"tail": "Not a number."}) from None
        if not 1 <= tail <= 5000:
            raise PortalError("tail must be from 1 to 5000 lines.", fields={"tail": "Out of range."})
        return Response(selectors.service_logs(self.get_object(), tail=tail))

    @extend_schema(parameters=[OpenApiParameter("format", str, enum=list(kubernetes.FORMATS))],
                   responses={(200, "application/yaml"): str})
    @action(detail=True, methods=["get"], content_negotiation_class=_IgnoreFormatParam)
    def export(self, request, **kwargs):
        """The service as deployment files: ``?format=kubernetes`` answers a YAML Secret, Deployment,
        Service and HorizontalPodAutoscaler (members only: the Secret carries the keys)."""
        text, filename = selectors.service_export(self.get_object(), request.query_params.get("format"))
        response = HttpResponse(text, content_type="application/yaml; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(responses={200: dict}, parameters=[OpenApiParameter(
        "live", bool, description="1: ask the replicas now (at most 1 s each; not while the engine is down)")])
    @action(detail=True, methods=["get"])
    def metrics(self, request, **kwargs):
        """Scoring requests and latency of each replica and the totals, from the snapshot the worker
        side took of their /metrics (``checked_at``, ``note``: how old it is)."""
        live = request.query_params.get("live", "") in ("1", "true", "yes")
        return Response(selectors.service_metrics(self.get_object(), live=live))

    @extend_schema(request=inline_serializer("ServiceUpdate", {
        "image": serializers.CharField(), "canary": serializers.IntegerField(required=False),
        "shadow": serializers.IntegerField(required=False), "bake_seconds": serializers.IntegerField(required=False),
        "thresholds": serializers.DictField(required=False)}), responses={202: ServiceSerializer})
    @action(detail=True, methods=["post"], url_path="update")
    def update_image(self, request, **kwargs):
        """Moves the service to another built image without downtime; with ``canary`` (1–99) the
        new image's replicas start beside the live ones and answer that percent of requests, with
        ``shadow`` (1–99) that percent is mirrored to them (answers dropped); promote or abort
        after. ``bake_seconds`` (default 300) and ``thresholds`` set the automatic rollback."""
        from gateway import services as gateway_services

        image = _value(request, "image")
        if image is None:
            raise PortalError("Name the image to update to: {\"image\": \"churnpred:2\"}.", fields={"image": "This field is required."})
        if _value(request, "canary") is not None or _value(request, "shadow") is not None:
            thresholds = request.data.get("thresholds") if hasattr(request.data, "get") else None
            service = gateway_services.service_rollout_start(
                service=self.get_object(), image=image, user=request.user, canary=_value(request, "canary"),
                shadow=_value(request, "shadow"), bake_seconds=_value(request, "bake_seconds"), thresholds=thresholds)
            return self._answer(service, code=status.HTTP_202_ACCEPTED)
        service = services.service_update(service=self.get_object(), image=image, user=request.user)
        return self._answer(service, code=status.HTTP_202_ACCEPTED)

    @extend_schema(request=inline_serializer("TrafficWeight", {"weight": serializers.IntegerField()}), responses={200: dict})
    @action(detail=True, methods=["get", "post"])
    def traffic(self, request, **kwargs):
        """The revisions serving and their weights, the last hour's per-revision figures and the
        history of weight changes (GET); POST ``{"weight": 30}`` changes the running canary's share."""
        from gateway import selectors as gateway_selectors
        from gateway import services as gateway_services

        service = self.get_object()
        if request.method == "POST":
            if _value(request, "weight") is None:
                raise PortalError("Say the new weight: {\"weight\": 30}.", fields={"weight": "This field is required."})
            service = gateway_services.service_rollout_weight(service=service, weight=_value(request, "weight"), user=request.user)
        return Response(gateway_selectors.service_traffic(service))

    @extend_schema(request=None, responses={202: ServiceSerializer})
    @action(detail=True, methods=["post"])
    def promote(self, request, **kwargs):
        """The canary (or shadow) revision takes all traffic; the old replicas stop."""
        from gateway import services as gateway_services

        service = gateway_services.service_rollout_finish(service=self.get_object(), user=request.user, action="promote")
        return self._answer(service, code=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: ServiceSerializer})
    @action(detail=True, methods=["post"])
    def abort(self, request, **kwargs):
        """Back to the live revision; the canary's (or shadow's) replicas stop."""
        from gateway import services as gateway_services

        service = gateway_services.service_rollout_finish(service=self.get_object(), user=request.user, action="abort")
        return self._answer(service, code=status.HTTP_202_ACCEPTED)

    @extend_schema(request=inline_serializer("ServiceRollback", {"revision": serializers.IntegerField(required=False),
                                                                  "image": serializers.CharField(required=False)}),
                   responses={202: ServiceSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request, **kwargs):
        service = services.service_rollback(service=self.get_object(), user=request.user,
                                            revision=_value(request, "revision"), image=_value(request, "image"))
        return self._answer(service, code=status.HTTP_202_ACCEPTED)

    @extend_schema(request=inline_serializer("ServiceScale", {"replicas": serializers.IntegerField()}),
                   responses={202: ServiceSerializer})
    @action(detail=True, methods=["post"])
    def scale(self, request, **kwargs):
        if _value(request, "replicas") is None:
            raise PortalError("Say how many replicas: {\"replicas\": 2}.", fields={"replicas": "This field is required."})
        service = self.get_object()
        if service.autoscale_enabled:
            raise Conflict(f"Service '{service.name}' is autoscaled ({service.autoscale_min_replicas} to "
                           f"{service.autoscale_max_replicas} replicas): change autoscale_min_replicas/autoscale_max_replicas, "
                           "or turn autoscaling off first.", code="autoscaled")
        service = services.service_scale(service=self.get_object(), replicas=_value(request, "replicas"), user=request.user)
        return self._answer(service, code=status.HTTP_202_ACCEPTED)


    @extend_schema(request=AutoscaleSerializer, responses={200: dict},
                   parameters=[OpenApiParameter("minutes", int, description="how far back the samples go (default 60)")])
    @action(detail=True, methods=["get", "post"])
    def autoscale(self, request, **kwargs):
        """The autoscale settings, the autoscaler's samples (replicas, busy workers, utilisation over
        time) and its decisions (GET); POST the settings to change (``autoscale_enabled``,
        ``autoscale_min_replicas`` (1), ``autoscale_max_replicas`` (10), ``autoscale_target_utilization``
        (70), ``autoscale_refresh_seconds`` (1), ``autoscale_stable_seconds`` (60)); the others stay."""
        service = self.get_object()
        if request.method == "POST":
            service = autoscaling.service_set_autoscale(service=service, user=request.user,
                                                        given=autoscaling.given_in(request.data))
        try:
            minutes = int(request.query_params.get("minutes", 60))
        except ValueError:
            raise PortalError("minutes must be a whole number.", fields={"minutes": "Not a number."}) from None
        if not 1 <= minutes <= 1440:
            raise PortalError("minutes must be from 1 to 1440.", fields={"minutes": "Out of range."})
        return Response(autoscaling.service_load(service, minutes=minutes))

    @extend_schema(request=inline_serializer("ServiceLimits", {"concurrency": serializers.IntegerField(required=False, allow_null=True),
                                                                "queue": serializers.IntegerField(required=False, allow_null=True)}),
                   responses={200: dict})
    @action(detail=True, methods=["get", "post"])
    def limits(self, request, **kwargs):
        """The gateway's limits for this service (GET), or set them (POST ``{"concurrency", "queue"}``;
        null goes back to the default): past both, callers get 503 with Retry-After."""
        from gateway import services as gateway_services

        service = self.get_object()
        if request.method == "POST":
            changes = request.data.dict() if hasattr(request.data, "dict") else dict(request.data or {})
            service = gateway_services.service_set_limits(service=service, user=request.user, changes=changes)
        return Response(gateway_services.limits_of(service))


# --- the scoring proxy ----------------------------------------------------------------------------

def _score_error(message: str, code: str, status_code: int, **headers) -> HttpResponse:
    response = HttpResponse(_json(error_body(message, code)), status=status_code, content_type="application/json")
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _json(data) -> str:
    import json

    return json.dumps(data)


class ServiceScoreView(APIView):
    """``POST /api/v1/services/<name or id>/score`` with ``Authorization: Bearer <service key>``:
    forwards the body to the service's replicas in turn (round robin) and passes the container's
    status code and body through. 401 without a key or with a wrong one; 413 over the body cap;
    503 while no replica is ready. The containers' own endpoints work without the portal."""

    authentication_classes = []  # a service key, checked below; never a user token or session
    permission_classes = [permissions.AllowAny]
    parser_classes = []  # the body goes to the container as it came

    @extend_schema(request={"application/json": dict}, responses={200: dict}, auth=[])
    def post(self, request, ref: str):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, key = header.partition(" ")
        unauthorized = {"WWW_Authenticate": 'Bearer realm="service"'}
        if not header:
            return _score_error("This service needs a key: send 'Authorization: Bearer <service key>' (the keys are on "
                                "the service's page).", "unauthorized", 401, **unauthorized)
        if scheme.lower() != "bearer" or not key.strip():
            return _score_error("Send the service key as 'Authorization: Bearer <service key>'.", "unauthorized", 401, **unauthorized)
        cap = settings.MLPORTAL_MAX_BODY_BYTES
        body = request.body
        if len(body) > cap:
            return _score_error(f"The request body is {len(body)} bytes, over the limit of {cap} bytes: send less data.",
                                "too_large", 413)
        service = selectors.find_for_scoring(ref, key.strip())
        if service is None:
            return _score_error(f"No service '{ref[:80]}' accepts this key: check the service name and its keys.",
                                "unauthorized", 401, **unauthorized)
        replicas = selectors.ready_replicas(service)
        if not replicas:
            return _score_error(f"Service '{service.name}' has no ready replica (it is {service.status}); try again "
                                "once it is healthy.", "not_ready", 503, Retry_After="5")
        try:
            answer = proxy.forward(proxy.round_robin(str(service.pk), replicas), path="/score", body=body,
                                   content_type=request.META.get("CONTENT_TYPE", "application/json"),
                                   key=service.proxy_key, request_id=request.headers.get("X-Request-Id"))
        except proxy.NoReplicaAnswered as exc:
            return _score_error(f"No replica of service '{service.name}' answered: {exc}", "bad_gateway", 502)
        response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
        response["X-MLPortal-Replica"] = str(answer.replica)
        response["X-MLPortal-Latency-Ms"] = f"{answer.latency_ms:.1f}"
        if answer.request_id:
            response["X-Request-Id"] = answer.request_id
        return response


ROUTES = [
    # api-* basenames: the pages own the plain names (service-list, environment-detail, …).
    ("environments", EnvironmentViewSet, "api-environment"),
    ("services", ServiceViewSet, "api-service"),
]
EXTRA_URLS = [
    re_path(r"^services/(?P<ref>[^/]+)/score/?$", ServiceScoreView.as_view(), name="api-service-score"),
]
