"""Helpers that pages of every app use: scoping to the user's workspaces, roles, pagination."""
from __future__ import annotations

import uuid

from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404

from workspaces.models import Role, Workspace
from workspaces.selectors import has_role, role_in

PER_PAGE = 25


def scoped(request, qs: QuerySet, *, workspace_field: str = "workspace", current_only: bool = True) -> QuerySet:
    """Rows of the user's workspaces; of the current (top bar) workspace only when `current_only`."""
    qs = qs.filter(**{f"{workspace_field}__memberships__user": request.user})
    if current_only:
        if request.workspace is None:
            return qs.none()
        qs = qs.filter(**{workspace_field: request.workspace})
    return qs


def get_scoped_or_404(request, qs: QuerySet, ref: str, *, name_field: str | None = "name", workspace_field: str = "workspace"):
    """Finds one object by id (or name, in the current workspace first) among the user's workspaces."""
    qs = scoped(request, qs, workspace_field=workspace_field, current_only=False)
    try:
        obj = qs.filter(pk=uuid.UUID(str(ref))).first()
    except ValueError:
        obj = None
        if name_field:
            matches = list(qs.filter(**{name_field: ref})[:20])
            matches.sort(key=lambda o: getattr(o, f"{workspace_field}_id", None) != getattr(request.workspace, "pk", None))
            obj = matches[0] if matches else None
    if obj is None:
        raise Http404("No such resource in your workspaces.")
    return obj


def require_page_role(request, workspace: Workspace, role: str = Role.CONTRIBUTOR) -> str:
    actual = role_in(request.user, workspace.pk)
    if actual is None:
        raise Http404("No such resource in your workspaces.")
    if not has_role(actual, role):
        raise PermissionDenied(f"This needs the {role} role in workspace '{workspace.name}'; you are a {actual}.")
    return actual


def paginate(request, qs, per_page: int = PER_PAGE):
    """Returns the page of `qs` asked for by ?page= (out-of-range pages give the last page)."""
    try:
        per_page = max(1, min(200, int(request.GET.get("page_size", per_page))))
    except ValueError:
        pass
    return Paginator(qs, per_page).get_page(request.GET.get("page"))
