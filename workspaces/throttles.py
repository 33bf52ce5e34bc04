"""API rate limits per token (DRF throttles): a token's requests, or a signed-in browser's, count
against MLPORTAL_API_RATE (writes also against MLPORTAL_API_WRITE_RATE); beyond it the answer is 429
with Retry-After, in the error shape. Unauthenticated requests are not counted here (they get 401,
and scoring with a service key has its own limits)."""
from __future__ import annotations

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from workspaces.models import ApiToken

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class _PerToken(SimpleRateThrottle):
    def get_rate(self):
        return getattr(settings, self.setting_name)

    def get_cache_key(self, request, view):
        auth = getattr(request, "auth", None)
        if isinstance(auth, ApiToken):
            ident = f"token:{auth.id}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            return None
        return self.cache_format % {"scope": self.scope, "ident": ident}


class TokenRateThrottle(_PerToken):
    scope = "token"
    setting_name = "MLPORTAL_API_RATE"


class TokenWriteRateThrottle(_PerToken):
    scope = "token-write"
    setting_name = "MLPORTAL_API_WRITE_RATE"

    def allow_request(self, request, view):
        if request.method in SAFE_METHODS:
            return True
        return super().allow_request(request, view)
