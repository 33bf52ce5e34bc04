"""The portal's static files, answered by the gateway on the event loop.

Django's ASGI handler runs every synchronous view and middleware in one thread per process, so
a page's stylesheet and scripts used to queue there, one after the other, in front of the
page's own data requests (a run's chart series waited behind four static files). WhiteNoise
still decides what a URL is and how it is answered (its index of STATIC_ROOT and the finders,
ETag / If-None-Match, ranges, Cache-Control, as ``WhiteNoiseMiddleware`` configures it from the
settings); only the sending moves here. Text files go gzipped to clients that take it, each
compressed once per version (ETag) and kept; the security headers Django's middleware would add
are added here.
"""
from __future__ import annotations

import gzip
from typing import Callable

COMPRESSIBLE = (b"text/", b"application/javascript", b"application/json", b"image/svg+xml")
MIN_GZIP_BYTES = 512
# What SecurityMiddleware and XFrameOptionsMiddleware add, plus a policy for files (none of them
# is a page that needs scripts of its own; an SVG opened on its own runs nothing).
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", b"default-src 'none'; style-src 'self'; img-src 'self' data:; "
                                                 b"frame-ancestors 'none'")]


class StaticFiles:
    def __init__(self) -> None:
        from django.conf import settings
        from whitenoise.middleware import WhiteNoiseMiddleware

        self.whitenoise = WhiteNoiseMiddleware(get_response=lambda request: None)
        self.prefix = self.whitenoise.static_prefix
        self.extra = list(SECURITY_HEADERS)
        if settings.SECURE_REFERRER_POLICY:
            self.extra.append((b"referrer-policy", str(settings.SECURE_REFERRER_POLICY).encode()))
        if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
            self.extra.append((b"cross-origin-opener-policy", str(settings.SECURE_CROSS_ORIGIN_OPENER_POLICY).encode()))
        self.gzipped: dict[tuple[str, bytes], bytes] = {}

    def find(self, path: str):
        """WhiteNoise's StaticFile for ``path``, or None (then Django answers, as before)."""
        if not path.startswith(self.prefix):
            return None
        if self.whitenoise.autorefresh:  # DEBUG: looked up on each request
            try:
                return self.whitenoise.find_file(path)
            except Exception:  # noqa: BLE001 - e.g. a path outside the static folders: Django answers it
                return None
        return self.whitenoise.files.get(path)

    async def answer(self, scope: dict, send: Callable, static_file) -> None:
        environ = {"HTTP_" + name.decode("latin-1").upper().replace("-", "_"): value.decode("latin-1")
                   for name, value in scope["headers"]}
        response = static_file.get_response(scope["method"], environ)
        body = b""
        if response.file is not None:
            with response.file:  # small files, read from the page cache
                body = response.file.read() if scope["method"] != "HEAD" else b""
        headers = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in response.headers]
        status = int(response.status)
        names = {k for k, _ in headers}
        content_type = dict(headers).get(b"content-type", b"")
        if (status == 200 and body and len(body) >= MIN_GZIP_BYTES and b"content-encoding" not in names
                and content_type.startswith(COMPRESSIBLE) and "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")):
            key = (scope["path"], dict(headers).get(b"etag", b""))
            packed = self.gzipped.get(key)
            if packed is None:
                packed = self.gzipped[key] = gzip.compress(body, compresslevel=9, mtime=0)
            body = packed
            headers = [(k, v) for k, v in headers if k != b"content-length"]
            headers += [(b"content-encoding", b"gzip"), (b"content-length", str(len(body)).encode())]
        if b"vary" not in names:
            headers.append((b"vary", b"Accept-Encoding"))
        await send({"type": "http.response.start", "status": status, "headers": headers + self.extra})
        await send({"type": "http.response.body", "body": body})
