"""Request-wide concerns: body size caps (413), JSON nesting (400) and the user's current workspace."""
from __future__ import annotations


from django.conf import settings
from django.http import JsonResponse

from core.errors import error_body


class BodySizeLimitMiddleware:
    """Answers 413 before reading a body over its cap: uploads (multipart) have their own, larger cap.

    Django alone turns an over-size form body into a 400 and does not cover JSON read by DRF.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        content_type = request.META.get("CONTENT_TYPE", "")
        is_upload = content_type.startswith("multipart/") or content_type == "application/octet-stream"
        cap = settings.MLPORTAL_MAX_UPLOAD_BYTES if is_upload else settings.MLPORTAL_MAX_BODY_BYTES
        if length > cap:
            what = "upload" if is_upload else "request body"
            message = f"The {what} is {length} bytes, over the limit of {cap} bytes: send less data."
            return JsonResponse(error_body(message, "too_large"), status=413)
        return self.get_response(request)


_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def json_depth_over(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays/objects deeper than ``limit`` (strings skipped).
    Counts without parsing (Python's json recurses once per level and fails with a RecursionError,
    an HTML 500, on a deep enough body), at C speed: the brackets alone are kept and innermost
    pairs removed a level at a time, at most ``limit`` times. Text whose brackets do not pair up is
    not judged here (the parser says what is wrong with it)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    # Strings out: escaped backslashes, then escaped quotes, then every other quoted stretch.
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(text.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(brackets):
            return False  # unbalanced: the parser will answer
        brackets = shorter
    return bool(brackets) and (b"[]" in brackets or b"{}" in brackets)


class JsonDepthMiddleware:
    """Answers 400 in the error shape to a JSON body nested deeper than MLPORTAL_MAX_JSON_DEPTH,
    before any view parses it: every JSON API of the portal (DRF or plain Django) is covered.
    Runs after BodySizeLimitMiddleware, so the body read here is already bounded."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if "json" in request.META.get("CONTENT_TYPE", "") and request.method not in ("GET", "HEAD", "OPTIONS"):
            limit = settings.MLPORTAL_MAX_JSON_DEPTH
            if json_depth_over(request.body, limit):
                message = f"The JSON body nests deeper than {limit} levels: send flatter data."
                return JsonResponse(error_body(message, "too_deep", {"body": [message]}), status=400)
        return self.get_response(request)


class CurrentWorkspaceMiddleware:
    """Sets request.workspace (the top bar's workspace) and request.role for logged-in users."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.workspace = None
        request.role = None
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            from workspaces.selectors import current_workspace_and_role

            request.workspace, request.role = current_workspace_and_role(user)
        return self.get_response(request)
