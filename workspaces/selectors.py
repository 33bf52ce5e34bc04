"""Read queries about people and teams. Every scoped query in the product starts here."""
from __future__ import annotations

import uuid

from django.db.models import QuerySet

from workspaces.models import Activity, ApiToken, Membership, Profile, Role, Workspace


def workspaces_for_user(user) -> QuerySet[Workspace]:
    if not user.is_authenticated:
        return Workspace.objects.none()
    return Workspace.objects.filter(memberships__user=user)


def role_in(user, workspace_id) -> str | None:
    """Returns the user's role in the workspace, or None when they are not a member."""
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, workspace_id=workspace_id).values_list("role", flat=True).first()


def current_workspace_and_role(user) -> tuple[Workspace | None, str | None]:
    """Returns the workspace shown in the user's top bar and their role there.

    Falls back to the first workspace the user belongs to when none is chosen or they left it.
    """
    profile = Profile.objects.filter(user=user).select_related("current_workspace").first()
    if profile and profile.current_workspace_id:
        role = role_in(user, profile.current_workspace_id)
        if role:
            return profile.current_workspace, role
    membership = Membership.objects.filter(user=user).select_related("workspace").order_by("workspace__name").first()
    if membership is None:
        return None, None
    return membership.workspace, membership.role


def workspace_by_ref(user, ref: str) -> Workspace | None:
    """Finds one of the user's workspaces by id or name; None when it is not theirs or does not exist."""
    qs = workspaces_for_user(user)
    try:
        return qs.filter(id=uuid.UUID(str(ref))).first()
    except ValueError:
        return qs.filter(name=ref).first()


def members_of(workspace: Workspace) -> QuerySet[Membership]:
    return Membership.objects.filter(workspace=workspace).select_related("user").order_by("user__username")


def tokens_of(user) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at")


def activity_for_user(user) -> QuerySet[Activity]:
    return Activity.objects.filter(workspace__memberships__user=user).select_related("actor", "workspace")


def has_role(role: str | None, needed: str) -> bool:
    return Role.rank(role or "") >= Role.rank(needed)
