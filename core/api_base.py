"""Building blocks every app's REST API uses: pagination, workspace scoping, id-or-name lookup, roles.

A viewset that holds workspace resources subclasses WorkspaceScopedViewSet and sets:
  - `queryset`: the base queryset (all rows; scoping is added here),
  - `workspace_field`: the ORM path from the model to its Workspace ("workspace", "project__workspace"),
  - `name_field`: the field that holds the human name, or None ("name"; "number" for runs),
  - `write_role` / `delete_role`: the roles needed to change / delete (contributor / owner by default).
Objects of workspaces the user is not a member of never appear in a list and answer 404.
"""
from __future__ import annotations

import uuid

from django.db.models import QuerySet
from rest_framework import mixins, permissions, viewsets
from rest_framework.request import Request

from core.errors import Forbidden, NotFound, PortalError
from core.pagination import Pagination  # noqa: F401 (re-exported)
from workspaces.models import Role, Workspace
from workspaces.selectors import current_workspace_and_role, has_role, role_in, workspace_by_ref


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def workspace_from_request(request: Request, *, role: str = Role.READER, ref: str | None = None) -> Workspace:
    """Returns the workspace a request acts in: `ref`, else `?workspace=` / body `workspace`, else the
    user's current workspace. Raises NotFound for a workspace that is not theirs, Forbidden when the
    user's role there is below `role`."""
    if ref is None:
        ref = request.query_params.get("workspace") or (
            request.data.get("workspace") if hasattr(request.data, "get") else None
        )
    if ref:
        workspace = workspace_by_ref(request.user, str(ref))
        if workspace is None:
            raise NotFound(f"No workspace '{ref}' among yours.", fields={"workspace": "Unknown workspace."})
        actual = role_in(request.user, workspace.id)
    else:
        workspace, actual = current_workspace_and_role(request.user)
        if workspace is None:
            raise PortalError("You belong to no workspace yet: create one first.", code="no_workspace")
    if not has_role(actual, role):
        raise Forbidden(f"This needs the {role} role in workspace '{workspace.name}'; you are a {actual}.", code="role_required")
    return workspace


class WorkspaceRolePermission(permissions.BasePermission):
    """Readers may read; writes need the viewset's write_role; deletes its delete_role."""

    def has_object_permission(self, request, view, obj) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        workspace = view.workspace_of(obj)
        actual = role_in(request.user, workspace.id)
        needed = view.delete_role if request.method == "DELETE" else view.write_role
        needed = view.role_for_action(view.action) or needed
        if not has_role(actual, needed):
            raise Forbidden(
                f"This needs the {needed} role in workspace '{workspace.name}'; you are a {actual}.", code="role_required"
            )
        return True


class WorkspaceScopedMixin:
    workspace_field: str = "workspace"
    name_field: str | None = "name"
    write_role: str = Role.CONTRIBUTOR
    delete_role: str = Role.OWNER
    action_roles: dict[str, str] = {}
    lookup_field = "pk"
    lookup_value_regex = "[^/]+"
    permission_classes = [permissions.IsAuthenticated, WorkspaceRolePermission]

    def role_for_action(self, action: str | None) -> str | None:
        return self.action_roles.get(action or "")

    def workspace_of(self, obj) -> Workspace:
        value = obj
        for part in self.workspace_field.split("__"):
            value = getattr(value, part)
        return value

    def scope(self, qs: QuerySet) -> QuerySet:
        """Limits `qs` to the user's workspaces, and to `?workspace=` when given."""
        user = self.request.user
        qs = qs.filter(**{f"{self.workspace_field}__memberships__user": user})
        ref = self.request.query_params.get("workspace")
        if ref:
            key = "id" if is_uuid(ref) else "name"
            qs = qs.filter(**{f"{self.workspace_field}__{key}": ref})
        return qs

    def get_queryset(self) -> QuerySet:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return super().get_queryset().none()
        return self.scope(super().get_queryset())

    def get_object(self):
        """Finds an object by id or, where the resource has one, by its name (current workspace first)."""
        ref = self.kwargs[self.lookup_url_kwarg or self.lookup_field]
        qs = self.filter_queryset(self.get_queryset()) if self.action != "retrieve" else self.get_queryset()
        obj = None
        if is_uuid(ref):
            obj = qs.filter(pk=ref).first()
        elif self.name_field:
            matches = self.lookup_by_name(qs, ref)
            obj = matches[0] if matches else None
        if obj is None:
            raise NotFound(f"Not found: no {self.resource_label()} '{ref}' in your workspaces.")
        self.check_object_permissions(self.request, obj)
        return obj

    def lookup_by_name(self, qs: QuerySet, ref: str) -> list:
        """Returns objects named `ref`, those of the current workspace first (names are unique per workspace)."""
        matches = list(qs.filter(**{self.name_field: ref})[:20])
        if len(matches) > 1:
            current, _ = current_workspace_and_role(self.request.user)
            if current is not None:
                matches.sort(key=lambda o: self.workspace_of(o).pk != current.pk)
        return matches

    def resource_label(self) -> str:
        return self.get_queryset().model._meta.verbose_name


class WorkspaceScopedViewSet(WorkspaceScopedMixin, viewsets.ModelViewSet):
    pass


class WorkspaceScopedReadOnlyViewSet(WorkspaceScopedMixin, viewsets.ReadOnlyModelViewSet):
    pass


class CreateListRetrieveDestroyViewSet(
    WorkspaceScopedMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    pass
