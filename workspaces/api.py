"""REST API: workspaces and their members, API tokens, the activity log, who am I."""
from __future__ import annotations

import django_filters
from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_base import WorkspaceScopedReadOnlyViewSet, is_uuid
from core.errors import NotFound
from workspaces import selectors, services
from workspaces.models import Activity, ApiToken, Membership, Role, Workspace

User = get_user_model()


class WorkspaceSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)

    class Meta:
        model = Workspace
        fields = ["id", "name", "description", "role", "created_by", "created_at"]
        read_only_fields = ["id", "role", "created_by", "created_at"]
        # Name rules and uniqueness are the service's, so the message is the same everywhere.
        extra_kwargs = {"name": {"validators": []}}

    def get_role(self, obj) -> str | None:
        return selectors.role_in(self.context["request"].user, obj.id)


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")

    class Meta:
        model = Membership
        fields = ["id", "username", "role", "created_at"]


class MemberWriteSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.CONTRIBUTOR)


class WorkspaceViewSet(viewsets.ModelViewSet):
    """The user's workspaces (teams). Addressable by id or name."""

    serializer_class = WorkspaceSerializer
    lookup_value_regex = "[^/]+"
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]
    filterset_fields = ["name"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return Workspace.objects.none()
        return selectors.workspaces_for_user(self.request.user).select_related("created_by").order_by("name")

    def get_object(self):
        workspace = selectors.workspace_by_ref(self.request.user, self.kwargs["pk"])
        if workspace is None:
            raise NotFound(f"Not found: no workspace '{self.kwargs['pk']}' among yours.")
        return workspace

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = services.workspace_create(
            name=data["name"], description=data.get("description", ""), user=self.request.user
        )

    def perform_update(self, serializer):
        serializer.instance = services.workspace_update(
            workspace=serializer.instance, user=self.request.user, description=serializer.validated_data.get("description"))

    def update(self, request, *args, **kwargs):
        if "name" in request.data:
            from core.errors import PortalError

            raise PortalError("A workspace's name cannot change.", fields={"name": "Read-only."})
        return super().update(request, *args, **kwargs)

    def perform_destroy(self, instance):
        services.workspace_delete(workspace=instance, user=self.request.user)

    @action(detail=True, methods=["post"])
    def select(self, request, pk=None):
        """Makes this the user's current workspace (the top bar's)."""
        workspace = self.get_object()
        services.profile_set_current_workspace(user=request.user, workspace=workspace)
        return Response(self.get_serializer(workspace).data)

    @extend_schema(request=MemberWriteSerializer, responses=MembershipSerializer(many=True))
    @action(detail=True, methods=["get", "post"])
    def members(self, request, pk=None):
        workspace = self.get_object()
        if request.method == "POST":
            body = MemberWriteSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            membership = services.membership_add(workspace=workspace, user=request.user, **body.validated_data)
            return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)
        return Response(MembershipSerializer(selectors.members_of(workspace), many=True).data)

    @extend_schema(request=MemberWriteSerializer, responses=MembershipSerializer)
    @action(detail=True, methods=["patch", "delete"], url_path=r"members/(?P<username>[^/]+)")
    def member(self, request, pk=None, username=None):
        workspace = self.get_object()
        membership = selectors.members_of(workspace).filter(user__username=username).first()
        if membership is None:
            raise NotFound(f"'{username}' is not a member of '{workspace.name}'.")
        if request.method == "DELETE":
            services.membership_remove(membership=membership, user=request.user)
            return Response(status=status.HTTP_204_NO_CONTENT)
        body = MemberWriteSerializer(data={"username": username, **request.data})
        body.is_valid(raise_exception=True)
        membership = services.membership_set_role(membership=membership, role=body.validated_data["role"], user=request.user)
        return Response(MembershipSerializer(membership).data)


class TokenSerializer(serializers.ModelSerializer):
    state = serializers.CharField(read_only=True, help_text="active, expired or revoked")
    expires_in_days = serializers.IntegerField(write_only=True, required=False, min_value=1,
                                               help_text="Lifetime of a new token (default: the portal's, 90 days)")

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "read_only", "state", "created_at", "last_used_at", "expires_at", "revoked_at",
                  "expires_in_days"]
        read_only_fields = ["id", "prefix", "state", "created_at", "last_used_at", "expires_at", "revoked_at"]


class TokenCreatedSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; only its hash is stored.")

    class Meta(TokenSerializer.Meta):
        fields = TokenSerializer.Meta.fields + ["token"]


class TokenViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                   mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """The user's own API tokens. DELETE revokes (the token keeps its row, marked revoked)."""

    serializer_class = TokenSerializer
    search_fields = ["name", "prefix"]
    ordering_fields = ["name", "created_at", "last_used_at"]
    filterset_fields = ["name"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return ApiToken.objects.none()
        return selectors.tokens_of(self.request.user)

    @extend_schema(responses=TokenCreatedSerializer)
    def create(self, request, *args, **kwargs):
        body = TokenSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        token, secret = services.token_create(user=request.user, name=body.validated_data["name"],
                                              expires_in_days=body.validated_data.get("expires_in_days"),
                                              read_only=body.validated_data.get("read_only", False))
        data = TokenSerializer(token).data | {"token": secret}
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        services.token_revoke(token=instance, user=self.request.user)


class ActivitySerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.username", default=None, read_only=True)
    workspace = serializers.CharField(source="workspace.name", default=None, read_only=True)

    class Meta:
        model = Activity
        fields = ["id", "workspace", "actor", "verb", "target_type", "target_id", "target_name", "detail", "created_at"]


class ActivityFilter(django_filters.FilterSet):
    actor = django_filters.CharFilter(field_name="actor__username")
    verb = django_filters.CharFilter(field_name="verb", lookup_expr="startswith")
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Activity
        fields = ["actor", "verb", "target_type", "target_id", "since", "until"]


class ActivityViewSet(WorkspaceScopedReadOnlyViewSet):
    """The activity log of the user's workspaces, newest first."""

    queryset = Activity.objects.select_related("actor", "workspace")
    serializer_class = ActivitySerializer
    filterset_class = ActivityFilter
    search_fields = ["target_name", "verb", "actor__username"]
    ordering_fields = ["created_at", "verb", "target_type"]
    name_field = None


class MeView(APIView):
    """Who the caller is, their current workspace and role."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        workspace, role = selectors.current_workspace_and_role(request.user)
        return Response({
            "username": request.user.username,
            "workspace": workspace.name if workspace else None,
            "workspace_id": str(workspace.id) if workspace else None,
            "role": role,
        })


ROUTES = [
    ("workspaces", WorkspaceViewSet, "workspace"),
    ("tokens", TokenViewSet, "token"),
    ("activity", ActivityViewSet, "activity"),
]
