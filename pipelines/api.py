"""REST API: /api/v1/pipelines/ (create, list, show, change, delete, ``POST {ref}/run/``) and
/api/v1/pipeline-runs/ (each retraining with its steps; ``POST {id}/cancel/``). Thin: parse, then
one service call."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from pipelines import services
from core.api_base import WorkspaceScopedMixin, WorkspaceScopedReadOnlyViewSet, workspace_from_request
from core.errors import PortalError
from pipelines.models import Pipeline, PipelineRun, PipelineStep, Webhook, WebhookDelivery
from workspaces.models import Role
import hashlib
import hmac

from django.urls import path, reverse
from rest_framework import mixins, permissions, viewsets
from rest_framework.parsers import BaseParser
from rest_framework.views import APIView

from core.errors import Forbidden, NotFound


class NotAuthenticated(PortalError):
    status_code = 401
    default_code = "signature_missing"


class _RawParser(BaseParser):
    """Any body, kept as bytes: the signature covers the exact bytes sent."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return {}


class StepSerializer(serializers.ModelSerializer):
    duration_s = serializers.FloatField(read_only=True)

    class Meta:
        model = PipelineStep
        fields = ["position", "name", "status", "started_at", "ended_at", "duration_s", "log", "links"]


class PipelineRunSerializer(serializers.ModelSerializer):
    pipeline = serializers.CharField(source="pipeline.name", read_only=True)
    pipeline_id = serializers.UUIDField(read_only=True)
    triggered_by = serializers.CharField(source="triggered_by.username", default=None)
    run = serializers.SerializerMethodField()
    model = serializers.CharField(source="model.ref", default=None)
    served_model = serializers.CharField(source="served_model.ref", default=None)
    manifest = serializers.CharField(source="manifest.ref", default=None)
    image = serializers.CharField(source="image.ref", default=None)
    duration_s = serializers.FloatField(read_only=True)
    steps = serializers.SerializerMethodField()

    class Meta:
        model = PipelineRun
        fields = ["id", "pipeline", "pipeline_id", "number", "status", "reason", "trigger", "trigger_detail", "triggered_by",
                  "run", "run_id", "served_model", "model", "model_id", "manifest", "manifest_id", "image", "image_id",
                  "revision", "created_at", "started_at", "ended_at", "duration_s", "steps"]
        read_only_fields = fields

    def get_run(self, obj) -> str | None:
        return f"{obj.run.project.name} #{obj.run.number}" if obj.run_id and obj.run else None

    def get_steps(self, obj) -> list[dict]:
        return StepSerializer(obj.steps.order_by("position"), many=True).data


class PipelineSerializer(serializers.ModelSerializer):
    workspace = serializers.CharField(source="workspace.name", read_only=True)
    project = serializers.CharField(source="project.name", read_only=True)
    service = serializers.CharField(source="service.name", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    last_run = serializers.SerializerMethodField()
    webhook = serializers.SerializerMethodField(help_text="Whether it has an incoming webhook (its secret is never shown again)")
    webhook_url = serializers.SerializerMethodField()

    class Meta:
        model = Pipeline
        fields = ["id", "workspace", "name", "description", "project", "project_id", "script", "args", "target",
                  "output_path", "model_name", "service", "service_id", "gate", "mode", "when_busy", "rollout",
                  "canary_weight", "canary_bake_seconds", "requirements_path", "enabled", "schedule", "trigger_on_data",
                  "trigger_on_drift", "webhook", "webhook_url", "last_run", "created_by",
                  "created_at", "updated_at"]
        read_only_fields = fields

    def get_webhook(self, obj) -> bool:
        return bool(obj.webhook_secret)

    def get_webhook_url(self, obj) -> str | None:
        if not obj.webhook_secret:
            return None
        request = self.context.get("request")
        path = reverse("api-pipeline-hook", kwargs={"pk": obj.pk})
        return request.build_absolute_uri(path) if request else path

    def get_last_run(self, obj) -> dict | None:
        run = obj.runs.order_by("-number").first()
        return None if run is None else {"id": str(run.pk), "number": run.number, "status": run.status,
                                         "reason": run.reason, "created_at": run.created_at}


PipelineWrite = inline_serializer("PipelineWrite", {
    "name": serializers.CharField(), "project": serializers.CharField(), "script": serializers.CharField(),
    "service": serializers.CharField(), "gate": serializers.CharField(required=False),
    "output_path": serializers.CharField(required=False), "model_name": serializers.CharField(required=False),
    "target": serializers.CharField(required=False), "args": serializers.ListField(required=False),
    "mode": serializers.ChoiceField(Pipeline.Mode.values, required=False),
    "when_busy": serializers.ChoiceField(Pipeline.WhenBusy.values, required=False),
    "rollout": serializers.ChoiceField(Pipeline.Rollout.values, required=False),
    "canary_weight": serializers.IntegerField(required=False), "canary_bake_seconds": serializers.IntegerField(required=False),
    "requirements_path": serializers.CharField(required=False), "enabled": serializers.BooleanField(required=False),
    "schedule": serializers.CharField(required=False, help_text='"0 3 * * *" or "every 6 hours"'),
    "trigger_on_data": serializers.BooleanField(required=False),
    "trigger_on_drift": serializers.BooleanField(required=False), "webhook": serializers.BooleanField(required=False),
    "description": serializers.CharField(required=False), "workspace": serializers.CharField(required=False)})


def _body(request) -> dict:
    data = request.data.dict() if hasattr(request.data, "dict") else request.data
    if not isinstance(data, dict):
        raise PortalError("Send a JSON object with the pipeline's fields.")
    return dict(data)


class PipelineViewSet(WorkspaceScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Retraining pipelines: POST creates one (project, script, service, gate …); PATCH changes it;
    DELETE removes it (owner); ``POST {ref}/run/`` triggers a retraining ("Retrain now")."""

    queryset = Pipeline.objects.select_related("workspace", "project", "service", "created_by")
    serializer_class = PipelineSerializer
    filterset_fields = ["name", "enabled", "mode"]
    search_fields = ["name", "description", "script", "service__name", "project__name"]
    ordering_fields = ["name", "created_at", "updated_at"]
    ordering = ["name"]
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(request=PipelineWrite, responses={201: PipelineSerializer})
    def create(self, request, *args, **kwargs):
        workspace = workspace_from_request(request, role=Role.CONTRIBUTOR)
        values = _body(request)
        values.pop("workspace", None)
        pipeline = services.pipeline_create(workspace=workspace, user=request.user, **values)
        data = self.get_serializer(pipeline).data
        if pipeline.webhook_secret:
            data["webhook_secret"] = pipeline.webhook_secret  # shown this once
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=PipelineWrite, responses=PipelineSerializer)
    def partial_update(self, request, *args, **kwargs):
        pipeline = services.pipeline_update(pipeline=self.get_object(), user=request.user, changes=_body(request))
        return Response(self.get_serializer(pipeline).data)

    def update(self, request, *args, **kwargs):
        return self.partial_update(request, *args, **kwargs)

    def destroy(self, request, *args, **kwargs):
        services.pipeline_delete(pipeline=self.get_object(), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={202: PipelineRunSerializer})
    @action(detail=True, methods=["post"])
    def run(self, request, **kwargs):
        """Retrain now: a queued pipeline run (or a skipped one, saying why, when busy)."""
        run = services.pipeline_trigger(pipeline=self.get_object(), user=request.user, detail="API")
        return Response(PipelineRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=inline_serializer("WebhookSecret", {"enabled": serializers.BooleanField(required=False)}),
                   responses={200: inline_serializer("WebhookSecretAnswer", {
                       "webhook_secret": serializers.CharField(allow_null=True), "webhook_url": serializers.CharField(allow_null=True)})})
    @action(detail=True, methods=["post"], url_path="webhook-secret")
    def webhook_secret(self, request, **kwargs):
        """A new secret for the incoming webhook (shown this once; the old one stops working), or
        ``{"enabled": false}`` to turn the webhook off."""
        from pipelines.services import _flag

        enabled = request.data.get("enabled", True) if hasattr(request.data, "get") else True
        pipeline = self.get_object()
        secret = services.pipeline_webhook_secret(pipeline=pipeline, user=request.user, enable=_flag(enabled))
        data = self.get_serializer(pipeline).data
        return Response({"webhook_secret": secret or None, "webhook_url": data["webhook_url"]})

    @extend_schema(responses=PipelineRunSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="runs")
    def runs(self, request, **kwargs):
        """The pipeline's runs, newest first (paginated)."""
        pipeline = self.get_object()
        page = self.paginate_queryset(pipeline.runs.select_related("pipeline", "run__project", "model", "manifest", "image",
                                                                   "served_model", "triggered_by").order_by("-number"))
        return self.get_paginated_response(PipelineRunSerializer(page, many=True).data)


class PipelineRunViewSet(WorkspaceScopedReadOnlyViewSet):
    """Pipeline runs with their steps (status, duration, log, links). ``?pipeline=<id or name>``."""

    queryset = PipelineRun.objects.select_related("pipeline", "run__project", "model", "manifest", "image", "served_model",
                                                  "triggered_by", "workspace")
    serializer_class = PipelineRunSerializer
    name_field = None
    filterset_fields = ["status", "trigger"]
    ordering_fields = ["created_at", "number"]
    ordering = ["-created_at"]

    def filter_queryset(self, queryset):
        queryset = super().filter_queryset(queryset)
        ref = self.request.query_params.get("pipeline")
        if ref:
            from core.api_base import is_uuid

            queryset = queryset.filter(**{"pipeline_id" if is_uuid(ref) else "pipeline__name": ref})
        return queryset

    @extend_schema(request=None, responses=PipelineRunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, **kwargs):
        self.action_roles = {"cancel": Role.CONTRIBUTOR}
        run = services.pipeline_run_cancel(pipeline_run=self.get_object(), user=request.user)
        return Response(PipelineRunSerializer(run).data)


class PipelineHookView(APIView):
    """The incoming webhook: ``POST /api/v1/pipelines/<id>/hook/`` with the body signed by the
    pipeline's secret, ``X-MLPortal-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``
    (GitHub's ``X-Hub-Signature-256`` is read too). No user token: the signature is the proof.
    Answers 202 with the pipeline run; 401 unsigned, 403 a signature that does not match, 404 a
    pipeline that does not exist or has no webhook."""

    authentication_classes: list = []
    permission_classes = [permissions.AllowAny]
    parser_classes = [_RawParser]

    @extend_schema(request=None, responses={202: PipelineRunSerializer})
    def post(self, request, pk):
        body = request.body
        pipeline = Pipeline.objects.filter(pk=pk).exclude(webhook_secret="").first()
        if pipeline is None:
            raise NotFound("No pipeline with an incoming webhook here.")
        given = request.headers.get("X-MLPortal-Signature-256") or request.headers.get("X-Hub-Signature-256") or ""
        if not given:
            raise NotAuthenticated("Sign the body with the pipeline's webhook secret: X-MLPortal-Signature-256: "
                                   "sha256=<hex HMAC-SHA256(secret, body)>.", code="signature_missing")
        expected = "sha256=" + hmac.new(pipeline.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.strip().lower(), expected):
            raise Forbidden("The signature does not match the body: sign exactly the bytes you send, with the "
                            "pipeline's current webhook secret.", code="bad_signature")
        sender = (request.headers.get("User-Agent") or "webhook")[:100]
        run = services.pipeline_trigger(pipeline=pipeline, trigger=PipelineRun.Trigger.WEBHOOK, detail=sender)
        return Response(PipelineRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class DeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = ["id", "event", "object_id", "status", "attempts", "response_code", "latency_ms", "error", "log",
                  "next_attempt_at", "created_at", "delivered_at", "payload"]


class WebhookSerializer(serializers.ModelSerializer):
    workspace = serializers.CharField(source="workspace.name", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    last_delivery = serializers.SerializerMethodField()

    class Meta:
        model = Webhook
        fields = ["id", "workspace", "name", "url", "events", "enabled", "last_delivery", "created_by", "created_at"]
        read_only_fields = fields

    def get_last_delivery(self, obj) -> dict | None:
        last = obj.deliveries.order_by("-created_at").first()
        return None if last is None else {"event": last.event, "status": last.status, "response_code": last.response_code,
                                          "created_at": last.created_at}


WebhookWrite = inline_serializer("WebhookWrite", {
    "name": serializers.CharField(), "url": serializers.CharField(),
    "events": serializers.ListField(child=serializers.ChoiceField([e for e in Webhook.Event.values if e != "ping"]),
                                    required=False, help_text="Empty: every event"),
    "enabled": serializers.BooleanField(required=False), "workspace": serializers.CharField(required=False)})


class WebhookViewSet(WorkspaceScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Outgoing webhooks of a workspace (owners manage them): HMAC-signed POSTs on run finished,
    model registered, image built, service updated, pipeline finished, drift detected. The secret
    is in the create answer only. ``POST {ref}/test/`` sends a test; ``GET {ref}/deliveries/`` is the log."""

    queryset = Webhook.objects.select_related("workspace", "created_by")
    serializer_class = WebhookSerializer
    search_fields = ["name", "url"]
    ordering = ["name"]
    write_role = Role.OWNER
    action_roles = {"test": Role.CONTRIBUTOR}

    @extend_schema(request=WebhookWrite, responses={201: WebhookSerializer})
    def create(self, request, *args, **kwargs):
        from pipelines import webhooks

        workspace = workspace_from_request(request, role=Role.OWNER)
        data = _body(request)
        webhook = webhooks.webhook_create(workspace=workspace, name=data.get("name"), url=data.get("url"),
                                          events=data.get("events"), user=request.user)
        return Response({**self.get_serializer(webhook).data, "secret": webhook.secret}, status=status.HTTP_201_CREATED)

    @extend_schema(request=WebhookWrite, responses=WebhookSerializer)
    def partial_update(self, request, *args, **kwargs):
        from pipelines import webhooks

        webhook = webhooks.webhook_update(webhook=self.get_object(), user=request.user, changes=_body(request))
        return Response(self.get_serializer(webhook).data)

    def destroy(self, request, *args, **kwargs):
        from pipelines import webhooks

        webhooks.webhook_delete(webhook=self.get_object(), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={202: DeliverySerializer})
    @action(detail=True, methods=["post"])
    def test(self, request, **kwargs):
        from pipelines import webhooks

        delivery = webhooks.webhook_send_test(webhook=self.get_object(), user=request.user)
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=DeliverySerializer(many=True))
    @action(detail=True, methods=["get"])
    def deliveries(self, request, **kwargs):
        """The delivery log, newest first: status, attempts, response code, latency (paginated)."""
        webhook = self.get_object()
        page = self.paginate_queryset(webhook.deliveries.order_by("-created_at"))
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)


EXTRA_URLS = [path("pipelines/<uuid:pk>/hook/", PipelineHookView.as_view(), name="api-pipeline-hook")]

ROUTES = [
    ("pipelines", PipelineViewSet, "api-pipeline"),
    ("pipeline-runs", PipelineRunViewSet, "api-pipeline-run"),
    ("webhooks", WebhookViewSet, "api-webhook"),
]
