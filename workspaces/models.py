"""Teams (workspaces), their members and roles, API tokens, and the activity log."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    READER = "reader", "Reader"
    CONTRIBUTOR = "contributor", "Contributor"
    OWNER = "owner", "Owner"

    @classmethod
    def rank(cls, role: str) -> int:
        return {cls.READER: 1, cls.CONTRIBUTOR: 2, cls.OWNER: 3}.get(role, 0)


class Workspace(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.SlugField(max_length=63, unique=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # Set only by a portal administrator (the admin site): local runs execute contributor code on the
    # worker's host, so no workspace owner may turn them on for themselves.
    local_runs_allowed = models.BooleanField(
        default=False, help_text="Members may run on target local (also needs MLPORTAL_LOCAL_RUNS=on)")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def local_runs_enabled(self) -> bool:
        return bool(settings.MLPORTAL_LOCAL_RUNS and self.local_runs_allowed)


class Membership(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.CONTRIBUTOR)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "user"], name="one_membership_per_user")]
        ordering = ["workspace__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.role})"


class Profile(models.Model):
    """Per-user portal state: the workspace shown in the top bar."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="portal_profile")
    current_workspace = models.ForeignKey(Workspace, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    def __str__(self) -> str:
        return f"profile of {self.user}"


class ApiToken(models.Model):
    """A named bearer token; only its SHA-256 is stored, the token itself is shown once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="First characters, so a user can tell tokens apart")
    # Lookup of every API request by hash: unique gives the index.
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Chosen at creation (MLPORTAL_TOKEN_DAYS by default); null only for tokens made before expiry existed.
    expires_at = models.DateTimeField(null=True, blank=True)
    read_only = models.BooleanField(default=False, help_text="Only GET, HEAD and OPTIONS requests")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…) of {self.user}"

    @property
    def is_expired(self) -> bool:
        from django.utils import timezone

        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.is_expired else "active"


class Activity(models.Model):
    """One line of the activity log: who did what to which resource, and when."""

    workspace = models.ForeignKey(Workspace, null=True, on_delete=models.CASCADE, related_name="activities")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    verb = models.CharField(max_length=64)  # e.g. "run.submitted", "model.registered"
    target_type = models.CharField(max_length=32)
    target_id = models.CharField(max_length=64)
    target_name = models.CharField(max_length=255, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # The Activity page and API list a workspace's newest entries first.
        indexes = [models.Index(fields=["workspace", "-created_at"], name="activity_ws_recent")]
        verbose_name_plural = "activities"

    def __str__(self) -> str:
        return f"{self.actor} {self.verb} {self.target_type} {self.target_name or self.target_id}"


class IdempotencyKey(models.Model):
    """The first answer to a POST sent with an ``Idempotency-Key`` header, kept 24 h so a retry with
    the same key and body gets it again instead of a second resource (see workspaces.idempotency)."""

    # Who sent it: "user:<id>" (a token's user or a session), so one key of one person is one request.
    scope = models.CharField(max_length=80)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Null while the first request runs")
    content_type = models.CharField(max_length=120, blank=True)
    body = models.BinaryField(blank=True, default=b"")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)  # the 24 h sweep

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="one_idempotency_key_per_sender")]

    def __str__(self) -> str:
        return f"{self.key} of {self.scope} ({self.status_code or 'running'})"
