"""The one error shape of the product, and the exceptions services raise for user mistakes.

Every API error body is ``{"error": {"code": str, "message": str, "fields": {field: [messages]}}}``:
a message a person can act on, a stable machine code, and per-field messages where a field is at fault.
Services raise PortalError (or a subclass); views show its message next to the field, the API
returns it in the shape above, the CLI prints the message as one line.
"""
from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response


class PortalError(Exception):
    status_code = 400
    default_code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, fields: dict[str, list[str] | str] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.fields = {k: ([v] if isinstance(v, str) else list(v)) for k, v in (fields or {}).items()}


class NotFound(PortalError):
    status_code = 404
    default_code = "not_found"


class Forbidden(PortalError):
    status_code = 403
    default_code = "permission_denied"


class Conflict(PortalError):
    status_code = 409
    default_code = "conflict"


class PayloadTooLarge(PortalError):
    status_code = 413
    default_code = "too_large"


def error_body(message: str, code: str, fields: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turns DRF's nested ValidationError detail into {"a.b[0]": ["message"]}."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors":
                name = prefix or "non_field_errors"
            for k, v in _flatten(value, name).items():
                out.setdefault(k, []).extend(v)
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            out[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for i, item in enumerate(detail):
                if item:
                    out.update(_flatten(item, f"{prefix}[{i}]"))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF exception handler giving every error the product's one shape."""
    if isinstance(exc, PortalError):
        return Response(error_body(exc.message, exc.code, exc.fields), status=exc.status_code)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound("Not found: no such resource in your workspaces.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied(str(exc) or None)
    if not isinstance(exc, drf_exceptions.APIException):
        return None
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    if isinstance(exc, drf_exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first_field, first_messages = next(iter(fields.items()), ("", ["Invalid input."]))
        message = first_messages[0] if first_field == "non_field_errors" else f"{first_field}: {first_messages[0]}"
        return Response(error_body(message, "invalid", fields), status=status.HTTP_400_BAD_REQUEST, headers=headers)
    if isinstance(exc, drf_exceptions.ParseError):
        message = f"The request body is not valid: {exc.detail}"
        return Response(error_body(message, "parse_error", {"body": [str(exc.detail)]}), status=400, headers=headers)
    if isinstance(exc, drf_exceptions.NotAuthenticated):
        exc.status_code = 401
        return Response(
            error_body("Authentication needed: send 'Authorization: Bearer <token>' or log in.", "not_authenticated"),
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    if isinstance(exc, drf_exceptions.AuthenticationFailed):
        return Response(
            error_body(str(exc.detail), "authentication_failed"), status=401, headers={"WWW-Authenticate": 'Bearer realm="api"'}
        )
    code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
    return Response(error_body(str(exc.detail), str(code)), status=exc.status_code, headers=headers)
