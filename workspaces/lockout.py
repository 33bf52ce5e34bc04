"""What a locked-out login answers (django-axes calls ``lockout_response``): 429 with Retry-After,
a page that says how long to wait, or the one error shape to a client that asks for JSON."""
from __future__ import annotations

import math

from axes.helpers import get_cool_off
from django.http import JsonResponse
from django.shortcuts import render

from core.errors import error_body


def lockout_response(request, original_response=None, credentials=None):
    cool_off = get_cool_off(request)
    seconds = max(1, math.ceil(cool_off.total_seconds())) if cool_off else 900
    minutes = max(1, math.ceil(seconds / 60))
    message = (f"Too many failed sign-ins for this user from your address: try again in {minutes} minute(s), "
               "or ask a portal administrator to unlock it (python manage.py axes_reset_username USERNAME).")
    if "application/json" in request.headers.get("Accept", "") or request.path.startswith("/api/"):
        response = JsonResponse(error_body(message, "locked_out"), status=429)
    else:
        response = render(request, "workspaces/login_locked.html", {"message": message}, status=429)
    response["Retry-After"] = str(seconds)
    return response
