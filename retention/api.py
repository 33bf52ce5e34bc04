"""REST API: GET /api/v1/storage/ (what each project, model and image uses, the retention policy
and what it frees next), PATCH /api/v1/storage/retention/ (owners), POST /api/v1/storage/apply/
(owners: apply retention now, on the maintenance worker)."""
from __future__ import annotations

from django.db import transaction
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from retention import selectors, services
from retention.models import RetentionPolicy
from core.api_base import workspace_from_request
from workspaces.models import Role


def policy_body(policy: RetentionPolicy) -> dict:
    body = {name: getattr(policy, name) for name in RetentionPolicy.FIELDS}
    body["last_applied_at"] = policy.last_applied_at.isoformat() if policy.last_applied_at else None
    return body


def storage_body(workspace) -> dict:
    usage = selectors.storage_usage(workspace)
    return {"workspace": workspace.name, **usage, "retention": policy_body(selectors.policy_of(workspace)),
            "next": selectors.retention_plan(workspace).as_dict()}


class StorageView(APIView):
    """What the workspace's projects, models and images use, and what retention frees next."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        return Response(storage_body(workspace_from_request(request, role=Role.READER)))


class RetentionView(APIView):
    @extend_schema(request=dict, responses={200: dict})
    def patch(self, request):
        """Sets run_files_keep_days / run_files_keep_last / unused_images_keep_days /
        unused_images_keep_last / capture_keep_days (null: keep for good)."""
        workspace = workspace_from_request(request, role=Role.OWNER)
        values = {k: v for k, v in request.data.items() if k != "workspace"}
        policy = services.retention_policy_update(workspace=workspace, user=request.user, **values)
        return Response(policy_body(policy))


class ApplyView(APIView):
    @extend_schema(request=None, responses={202: dict})
    def post(self, request):
        """Applies the retention now (on the maintenance worker); answers at once."""
        from retention.tasks import apply_retention

        workspace = workspace_from_request(request, role=Role.OWNER)
        workspace_id = str(workspace.pk)
        transaction.on_commit(lambda: apply_retention.delay(workspace_id))
        return Response({"queued": True, "next": selectors.retention_plan(workspace).as_dict()}, status=202)


EXTRA_URLS = [
    path("storage/", StorageView.as_view(), name="api-storage"),
    path("storage/retention/", RetentionView.as_view(), name="api-storage-retention"),
    path("storage/apply/", ApplyView.as_view(), name="api-storage-apply"),
]
