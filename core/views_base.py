"""Helpers that pages of every app use: scoping to the user's workspaces, roles, sorting,
pagination, a service's error on its form, and the POST behind a page's button."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import redirect

from core.errors import PortalError
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


def can(request, obj, role: str = Role.CONTRIBUTOR) -> bool:
    """Whether the user holds ``role`` (or more) in ``obj``'s workspace (to show a button or a form)."""
    return has_role(role_in(request.user, obj.workspace_id), role)


def current_workspace(request, role: str = Role.CONTRIBUTOR) -> Workspace:
    """The top bar's workspace, where a page creates things; 404 without one, 403 below ``role``."""
    if request.workspace is None:
        raise Http404("You belong to no workspace yet.")
    require_page_role(request, request.workspace, role)
    return request.workspace


def sorted_by(request, qs: QuerySet, allowed: dict[str, str], default: str) -> tuple[QuerySet, str]:
    """``qs`` ordered by ?sort= (one of ``allowed``'s keys, else ``default``), ties by pk; and the sort used."""
    sort = request.GET.get("sort", default)
    return qs.order_by(allowed.get(sort, allowed[default]), "-pk"), (sort if sort in allowed else default)


def form_error(form, exc: PortalError) -> None:
    """Puts a service's message next to the field at fault, or on top of the form (also when it
    says more than the field's own message)."""
    placed = False
    for field, errors in exc.fields.items():
        if field in form.fields:
            for error in errors:
                form.add_error(field, error)
            placed = True
    if not placed or exc.message not in sum(exc.fields.values(), []):
        form.add_error(None, exc.message)


def page_action(request, workspace: Workspace, *, role: str, act: Callable[[], Any], done: str | Callable[[Any], str],
                back: str, then: str | Callable[[Any], str] | None = None):
    """The POST behind a page's button: checks ``role`` in ``workspace``, runs ``act()`` (one
    service call); its PortalError becomes an error message and a redirect to ``back``, success
    the message ``done`` (or ``done(result)``) and a redirect to ``then`` (default ``back``).
    ``back`` and ``then`` are URLs or URL names (what ``redirect`` takes)."""
    require_page_role(request, workspace, role)
    try:
        result = act()
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect(back)
    messages.success(request, done(result) if callable(done) else done)
    return redirect((then(result) if callable(then) else then) or back)


def paginate(request, qs, per_page: int = PER_PAGE):
    """Returns the page of `qs` asked for by ?page= (out-of-range pages give the last page)."""
    try:
        per_page = max(1, min(200, int(request.GET.get("page_size", per_page))))
    except ValueError:
        pass
    return Paginator(qs, per_page).get_page(request.GET.get("page"))
