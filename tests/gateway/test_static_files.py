"""The gateway answers /static/ itself, on the event loop (Django's ASGI handler ran them in its
one synchronous thread per process, in front of the page's own data requests): the same files
WhiteNoise serves, gzipped for clients that take it, revalidated by ETag, with the security
headers; anything it does not know still goes to Django."""
from __future__ import annotations

import gzip
import http.client
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _get(server, path: str, headers: dict | None = None, method: str = "GET"):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_static_files_come_from_the_gateway_gzipped_with_etags_and_security_headers(gateway):
    source = (REPO / "static" / "js" / "portal.js").read_bytes()
    status, headers, body = _get(gateway, "/static/js/portal.js", {"Accept-Encoding": "gzip, br"})
    assert status == 200 and headers["content-encoding"] == "gzip" and gzip.decompress(body) == source
    assert int(headers["content-length"]) == len(body) < len(source) / 2
    assert headers["x-content-type-options"] == "nosniff" and "default-src 'none'" in headers["content-security-policy"]
    assert "javascript" in headers["content-type"] and headers["vary"] == "Accept-Encoding"
    status, plain_headers, plain = _get(gateway, "/static/js/portal.js")
    assert status == 200 and plain == source and "content-encoding" not in plain_headers
    status, _, empty = _get(gateway, "/static/js/portal.js", {"If-None-Match": headers["etag"]})
    assert status == 304 and empty == b""
    status, head_headers, nothing = _get(gateway, "/static/css/portal.css", method="HEAD")
    assert status == 200 and nothing == b"" and "text/css" in head_headers["content-type"]
    status, _, _ = _get(gateway, "/static/js/no-such-file.js")
    assert status == 404  # not a static file: Django's answer, as before
    status, _, _ = _get(gateway, "/static/../mlportal/settings.py")
    assert status in (400, 404)
