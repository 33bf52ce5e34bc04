"""Every change to people, teams, tokens and the activity log goes through these functions."""
from __future__ import annotations

import re
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import Conflict, Forbidden, NotFound, PortalError
from workspaces.auth import TOKEN_PREFIX, hash_token
from workspaces.models import Activity, ApiToken, Membership, Profile, Role, Workspace
from workspaces.selectors import has_role, role_in

User = get_user_model()
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_name(value: str, *, field: str = "name", what: str = "name") -> str:
    """Returns a valid resource name or raises PortalError telling what to change."""
    value = (value or "").strip()
    if not value:
        raise PortalError(f"A {what} is needed.", fields={field: "This field is required."})
    if not NAME_RE.match(value):
        message = (
            f"{what.capitalize()} {value[:80]!r} is not allowed: use 1–63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit."
        )
        raise PortalError(message, fields={field: message})
    return value


def require_role(*, user, workspace: Workspace, role: str) -> str:
    """Returns the user's role in `workspace`, or raises: NotFound for outsiders, Forbidden when too low."""
    actual = role_in(user, workspace.id)
    if actual is None:
        raise NotFound("Not found: no such resource in your workspaces.")
    if not has_role(actual, role):
        raise Forbidden(
            f"This needs the {role} role in workspace '{workspace.name}'; you are a {actual}.", code="role_required"
        )
    return actual


def activity_record(
    *, workspace: Workspace | None, actor, verb: str, target: Any, detail: dict | None = None
) -> Activity:
    """Adds one activity line. `target` is any model instance with an id (and a name, ideally)."""
    name = getattr(target, "name", "") or str(target)
    version = getattr(target, "version", None)
    if version is not None and not isinstance(version, bool):
        name = f"{name} v{version}"
    return Activity.objects.create(
        workspace=workspace,
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        verb=verb,
        target_type=target._meta.model_name,
        target_id=str(target.pk),
        target_name=name[:255],
        detail=detail or {},
    )


@transaction.atomic
def workspace_create(*, name: str, user, description: str = "") -> Workspace:
    name = check_name(name, what="workspace name")
    if Workspace.objects.filter(name=name).exists():
        raise Conflict(f"A workspace named '{name}' exists already: choose another name.", fields={"name": "Taken."})
    try:
        with transaction.atomic():
            workspace = Workspace.objects.create(name=name, description=description, created_by=user)
    except IntegrityError:
        raise Conflict(f"A workspace named '{name}' exists already: choose another name.") from None
    Membership.objects.create(workspace=workspace, user=user, role=Role.OWNER)
    profile_set_current_workspace(user=user, workspace=workspace)
    activity_record(workspace=workspace, actor=user, verb="workspace.created", target=workspace)
    return workspace


@transaction.atomic
def workspace_update(*, workspace: Workspace, user, description: Any = None) -> Workspace:
    """Changes a workspace's description (owners only; names never change: scripts refer to them)."""
    require_role(user=user, workspace=workspace, role=Role.OWNER)
    if description is None:
        return workspace
    if not isinstance(description, str) or len(description) > 5000:
        raise PortalError("The description must be text of at most 5000 characters.",
                          fields={"description": "At most 5000 characters."})
    if description != workspace.description:
        workspace.description = description
        workspace.save(update_fields=["description"])
        activity_record(workspace=workspace, actor=user, verb="workspace.updated", target=workspace)
    return workspace


@transaction.atomic
def workspace_delete(*, workspace: Workspace, user) -> None:
    require_role(user=user, workspace=workspace, role=Role.OWNER)
    activity_record(workspace=None, actor=user, verb="workspace.deleted", target=workspace)
    workspace.delete()


def _check_role_value(role: str) -> str:
    if role not in Role.values:
        raise PortalError(f"Unknown role {role!r}: use reader, contributor or owner.", fields={"role": "Unknown role."})
    return role


@transaction.atomic
def membership_add(*, workspace: Workspace, username: str, role: str, user) -> Membership:
    require_role(user=user, workspace=workspace, role=Role.OWNER)
    _check_role_value(role)
    member = User.objects.filter(username=username, is_active=True).first()
    if member is None:
        raise PortalError(f"No active user named '{username}'.", fields={"username": "Unknown user."})
    if Membership.objects.filter(workspace=workspace, user=member).exists():
        raise Conflict(f"'{username}' is a member already: change their role instead.", fields={"username": "Already a member."})
    membership = Membership.objects.create(workspace=workspace, user=member, role=role)
    activity_record(workspace=workspace, actor=user, verb="member.added", target=workspace, detail={"user": username, "role": role})
    return membership


def _owners_left(workspace: Workspace, without_user_id: int) -> int:
    return Membership.objects.filter(workspace=workspace, role=Role.OWNER).exclude(user_id=without_user_id).count()


@transaction.atomic
def membership_set_role(*, membership: Membership, role: str, user) -> Membership:
    require_role(user=user, workspace=membership.workspace, role=Role.OWNER)
    _check_role_value(role)
    if membership.role == Role.OWNER and role != Role.OWNER and not _owners_left(membership.workspace, membership.user_id):
        raise Conflict("A workspace needs at least one owner: make someone else owner first.", fields={"role": "Last owner."})
    membership.role = role
    membership.save(update_fields=["role"])
    activity_record(
        workspace=membership.workspace, actor=user, verb="member.role_changed", target=membership.workspace,
        detail={"user": membership.user.username, "role": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, user) -> None:
    require_role(user=user, workspace=membership.workspace, role=Role.OWNER)
    if membership.role == Role.OWNER and not _owners_left(membership.workspace, membership.user_id):
        raise Conflict("A workspace needs at least one owner: make someone else owner first.")
    activity_record(
        workspace=membership.workspace, actor=user, verb="member.removed", target=membership.workspace,
        detail={"user": membership.user.username},
    )
    membership.delete()


def profile_set_current_workspace(*, user, workspace: Workspace) -> Profile:
    if role_in(user, workspace.id) is None:
        raise NotFound("Not found: no such workspace among yours.")
    profile, _ = Profile.objects.get_or_create(user=user)
    profile.current_workspace = workspace
    profile.save(update_fields=["current_workspace"])
    return profile


def check_token_days(days: int | None) -> int:
    """Returns the lifetime in days of a new token (MLPORTAL_TOKEN_DAYS when None), or raises
    PortalError naming the allowed range (1 to MLPORTAL_TOKEN_MAX_DAYS)."""
    if days is None or days == "":
        return settings.MLPORTAL_TOKEN_DAYS
    maximum = settings.MLPORTAL_TOKEN_MAX_DAYS
    try:
        days = int(days)
    except (TypeError, ValueError):
        days = 0
    if not 1 <= days <= maximum:
        message = f"A token lives 1 to {maximum} days (the portal's maximum): choose a number in that range."
        raise PortalError(message, fields={"expires_in_days": message})
    return days


def token_create(*, user, name: str, expires_in_days: int | None = None, read_only: bool = False) -> tuple[ApiToken, str]:
    """Returns the new token and its secret value, which is never stored and shown only this once.
    It expires after ``expires_in_days`` (the portal's default when None); a ``read_only`` token
    may only read (GET, HEAD, OPTIONS)."""
    name = (name or "").strip()
    if not name or len(name) > 100 or any(ord(c) < 32 for c in name):
        raise PortalError("A token needs a name of 1–100 printable characters.", fields={"name": "Invalid name."})
    days = check_token_days(expires_in_days)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=secret[:10], token_hash=hash_token(secret),
                                    expires_at=timezone.now() + timedelta(days=days), read_only=bool(read_only))
    activity_record(workspace=None, actor=user, verb="token.created", target=token,
                    detail={"expires_in_days": days, "read_only": bool(read_only)})
    return token, secret


def tokens_revoke_all(*, user, reason: str) -> int:
    """Revokes every active token of ``user`` (a password change, say); returns how many."""
    count = ApiToken.objects.filter(user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if count:
        Activity.objects.create(workspace=None, actor=user, verb="token.revoked_all", target_type="user",
                                target_id=str(user.pk), target_name=user.get_username(),
                                detail={"count": count, "reason": reason})
    return count


def token_revoke(*, token: ApiToken, user) -> ApiToken:
    if token.user_id != user.id:
        raise NotFound("Not found: no such token among yours.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        activity_record(workspace=None, actor=user, verb="token.revoked", target=token)
    return token


@transaction.atomic
def user_bootstrap(*, username: str, password: str | None = None, workspace_name: str = "default", superuser: bool = False):
    """Creates a user (if missing) with a workspace they own. Returns (user, created, password or None)."""
    user = User.objects.filter(username=username).first()
    created = False
    if user is None:
        password = password or secrets.token_urlsafe(12)
        if superuser:
            user = User.objects.create_superuser(username=username, password=password, email="")
        else:
            user = User.objects.create_user(username=username, password=password)
        created = True
    if not Membership.objects.filter(user=user).exists():
        name = workspace_name
        if Workspace.objects.filter(name=name).exists():
            name = check_name(f"{workspace_name}-{username}"[:63].lower().replace(".", "-"))
        workspace_create(name=name, user=user)
    return user, created, (password if created else None)
