"""Idempotent creates: a POST to the API with an ``Idempotency-Key`` header is done once.

The first request with a key records itself (a row, unique per sender and key) before the view runs
and stores its answer after; a repeat within MLPORTAL_IDEMPOTENCY_HOURS with the same method, path
and body gets that stored answer (header ``Idempotent-Replayed: true``), one with a different body
gets 409, and one that arrives while the first is still running gets 409 with Retry-After. Only a
success (2xx) is kept: after an error the key is free, so a corrected retry is processed. A first
request that died half-way (no answer after MLPORTAL_IDEMPOTENCY_STALE_SECONDS) frees its key too.

The body is hashed as it is read, spooled to a temporary file beyond a few MiB, so an upload of
hundreds of MiB is never held in memory for it. A multipart body is hashed by its parts, so a retry
that a client framed with a new boundary (they pick a random one each time) is still the same body.
"""
from __future__ import annotations

import hashlib
import re
import tempfile
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import JsonResponse
from django.utils import timezone
from django.utils.http import parse_header_parameters

from core.errors import error_body

HEADER = "HTTP_IDEMPOTENCY_KEY"
KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
MAX_STORED_BYTES = 1024 * 1024
SPOOL_BYTES = 4 * 1024 * 1024


def _sender(request) -> str | None:
    """"user:<id>" of the bearer token's user or the signed-in session, None for nobody (the view
    will answer 401 and nothing is recorded)."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    parts = header.split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        from workspaces.auth import hash_token
        from workspaces.models import ApiToken

        user_id = ApiToken.objects.filter(token_hash=hash_token(parts[1])).values_list("user_id", flat=True).first()
        return f"user:{user_id}" if user_id is not None else None
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return None


class _PartsDigest:
    """Hashes a multipart body as the sequence of what lies between its delimiters (``--`` and the
    boundary), each part hashed on its own, so the same parts under another boundary hash the same
    and no two different sequences of parts do. The delimiter is split where Django's parser
    splits, so what the view will see as parts is exactly what is hashed. Fed chunk by chunk; a
    delimiter across two chunks is found through the tail kept from the first."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"--" + boundary
        self.parts = hashlib.sha256(b"multipart\n")
        self.part = hashlib.sha256()
        self.tail = b""

    def update(self, chunk: bytes) -> None:
        data = self.tail + chunk
        start = 0
        while (at := data.find(self.delimiter, start)) != -1:
            self.part.update(data[start:at])
            self.parts.update(self.part.digest())
            self.part = hashlib.sha256()
            start = at + len(self.delimiter)
        cut = max(start, len(data) - len(self.delimiter) + 1)
        self.part.update(data[start:cut])
        self.tail = data[cut:]

    def hexdigest(self) -> str:
        self.part.update(self.tail)
        self.parts.update(self.part.digest())
        return self.parts.hexdigest()


def _multipart_boundary(request) -> bytes | None:
    """The boundary of a multipart body, None for any other body (or a multipart one without a
    usable boundary, which is then hashed as sent)."""
    content_type, params = parse_header_parameters(request.META.get("CONTENT_TYPE", ""))
    if not content_type.startswith("multipart/"):
        return None
    boundary = params.get("boundary", "")
    try:
        return boundary.encode("ascii") if 0 < len(boundary) <= 200 else None
    except UnicodeEncodeError:
        return None


def _fingerprint(request) -> str:
    """SHA-256 of method, path, query and body; the body is re-installed so the view reads it as sent.

    A multipart body is hashed by its parts, not its framing: a client retrying an upload (requests,
    curl, a browser) picks a new random boundary each time, and that retry is the same request."""
    head = f"{request.method} {request.get_full_path()}\n".encode()
    boundary = _multipart_boundary(request)
    body = _PartsDigest(boundary) if boundary else hashlib.sha256(head)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    while chunk := request.read(1024 * 1024):
        body.update(chunk)
        spool.write(chunk)
    spool.seek(0)
    request._stream = spool
    request._read_started = False
    if hasattr(request, "_body"):
        del request._body
    request._idempotency_spool = spool
    if boundary:
        return hashlib.sha256(head + body.hexdigest().encode()).hexdigest()
    return body.hexdigest()


def _conflict(message: str, code: str, *, retry_after: int | None = None) -> JsonResponse:
    response = JsonResponse(error_body(message, code, {"Idempotency-Key": [message]}), status=409)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


def _replay(row) -> JsonResponse:
    from django.http import HttpResponse

    response = HttpResponse(bytes(row.body), status=row.status_code, content_type=row.content_type or "application/json")
    response["Idempotent-Replayed"] = "true"
    return response


class IdempotencyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        key = request.META.get(HEADER)
        if key is None or request.method != "POST" or not request.path.startswith("/api/"):
            return self.get_response(request)
        if not KEY_RE.match(key):
            message = "The Idempotency-Key header must be 1–255 printable ASCII characters (a UUID, for example)."
            return JsonResponse(error_body(message, "invalid", {"Idempotency-Key": [message]}), status=400)
        sender = _sender(request)
        if sender is None:
            return self.get_response(request)
        from workspaces.models import IdempotencyKey

        fingerprint = _fingerprint(request)
        now = timezone.now()
        IdempotencyKey.objects.filter(created_at__lt=now - timedelta(hours=settings.MLPORTAL_IDEMPOTENCY_HOURS)).delete()
        stale = now - timedelta(seconds=settings.MLPORTAL_IDEMPOTENCY_STALE_SECONDS)
        IdempotencyKey.objects.filter(scope=sender, key=key, status_code__isnull=True, created_at__lt=stale).delete()
        try:
            with transaction.atomic():
                row = IdempotencyKey.objects.create(scope=sender, key=key, fingerprint=fingerprint)
        except IntegrityError:
            first = IdempotencyKey.objects.filter(scope=sender, key=key).first()
            if first is None:  # freed between the insert and this read: the sender may simply retry
                return _conflict("A request with this Idempotency-Key just ended: send it again.", "idempotency_retry",
                                 retry_after=1)
            if first.fingerprint != fingerprint:
                return _conflict("This Idempotency-Key was used for a different request (another body or path) "
                                 "in the last 24 hours: use a new key for a new request.", "idempotency_mismatch")
            if first.status_code is None:
                return _conflict("The first request with this Idempotency-Key is still being processed: "
                                 "retry in a moment to get its answer.", "idempotency_in_progress", retry_after=1)
            return _replay(first)

        keep = False
        try:
            response = self.get_response(request)
            content = b"" if response.streaming else response.content
            keep = 200 <= response.status_code < 300 and not response.streaming and len(content) <= MAX_STORED_BYTES
            if keep:
                IdempotencyKey.objects.filter(id=row.id).update(
                    status_code=response.status_code, content_type=response.get("Content-Type", "")[:120], body=content)
            return response
        finally:
            if not keep:
                IdempotencyKey.objects.filter(id=row.id).delete()
            spool = getattr(request, "_idempotency_spool", None)
            if spool is not None:
                spool.close()
