"""API authentication with named bearer tokens (only their SHA-256 is stored)."""
from __future__ import annotations

import hashlib

from django.utils import timezone
from rest_framework import authentication, exceptions

TOKEN_PREFIX = "mlp_"
READ_METHODS = {"GET", "HEAD", "OPTIONS"}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <token>`; a revoked token or an inactive user is refused at once."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if parts[0].lower() != self.keyword.lower():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Bearer <token>'.")
        from workspaces.models import ApiToken

        token = (
            ApiToken.objects.select_related("user").filter(token_hash=hash_token(parts[1]), revoked_at__isnull=True).first()
        )
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API token: create a new one on the Tokens page.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("This user account is deactivated.")
        now = timezone.now()
        if token.expires_at is not None and token.expires_at <= now:
            raise exceptions.AuthenticationFailed(
                f"This API token expired on {token.expires_at:%Y-%m-%d %H:%M} UTC: create a new one on the Tokens page "
                "(or with 'mlportal token create').")
        if token.read_only and request.method not in READ_METHODS:
            raise exceptions.PermissionDenied(
                f"Token '{token.name}' is read-only: use a token with write access for {request.method} requests.")
        # Write at most once a minute per token: the last-used time is for people, not an audit trail.
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(id=token.id).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
