"""Request-wide concerns: body size caps (413) and the user's current workspace."""
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
