"""The HTTP client of the portal's REST API, and the one exception the CLI turns into `error: …`.

Every failure a user can cause or meet (a 4xx answer, an unreachable server, a URL that is not a
portal) becomes a CliError whose message is one line: the server's own message where it sent one.
"""
from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any, Callable, Iterator

import requests

from mlportal_cli import __version__

API_PREFIX = "/api/v1/"
CONNECT_TIMEOUT = 10  # seconds
READ_TIMEOUT = 120  # seconds; uploads and downloads get longer ones
PAGE_SIZE = 200  # the API's largest page
# How long following a run or a build keeps trying while the portal is away (a restart, a deploy).
RECONNECT_SECONDS = 300
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 5.0
TRANSIENT_STATUSES = {502, 503, 504}  # a proxy in front of a portal that is restarting


class CliError(Exception):
    """A user-facing failure: main() prints `error: <message>` and exits with `exit_code`."""

    def __init__(self, message: str, *, exit_code: int = 1):
        super().__init__(message)
        self.message = " ".join(str(message).split()) or "failed"
        self.exit_code = exit_code


class Unreachable(CliError):
    """The portal did not answer at all (refused, reset, timed out)."""


class ApiError(CliError):
    """The portal answered 4xx/5xx; `code` and `fields` are those of its error body."""

    def __init__(self, message: str, *, status: int, code: str = "", fields: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.fields = fields or {}


def normalise_url(url: str) -> str:
    """Returns the portal's base URL (`http://host:port`) from what a user typed; raises CliError
    for anything that is not an http(s) URL. A pasted `…/api/v1/` suffix is dropped."""
    url = (url or "").strip().rstrip("/")
    if url.endswith("/api/v1"):
        url = url[: -len("/api/v1")]
    if not re.match(r"^https?://[^/\s]+", url):
        raise CliError(f"'{url or '(empty)'}' is not a portal URL: give it as http://host:port or https://host")
    return url


def _reason(exc: Exception) -> str:
    """The short cause of a connection failure ("Connection refused"), not urllib3's nested repr."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match.group(1).strip()
    for hint in ("Name or service not known", "Connection refused", "timed out", "Connection reset"):
        if hint.lower() in text.lower():
            return hint
    return type(exc).__name__


def error_from_response(response: requests.Response) -> ApiError:
    """The ApiError for a failed answer: the message of the portal's error body as it is, or a
    one-line description when the body is not the portal's (a proxy's HTML page, another server)."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and body["error"].get("message"):
        error = body["error"]
        return ApiError(str(error["message"]), status=status, code=str(error.get("code") or ""),
                        fields=error.get("fields") if isinstance(error.get("fields"), dict) else {})
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return ApiError(body["detail"], status=status)
    path = requests.utils.urlparse(response.url).path
    if status == 404:
        return ApiError(f"the server answered 404 for {path}: is this an MLPortal URL?", status=status)
    return ApiError(f"the portal answered HTTP {status} {response.reason or ''} for {path}".strip(), status=status)


class Client:
    """A session with the portal as one user (bearer token). `workspace`, when set, is sent as
    `?workspace=` on every API call so lists, lookups by name and creations happen in it."""

    def __init__(self, url: str, token: str | None, *, workspace: str | None = None):
        self.url = normalise_url(url)
        self.token = token
        self.workspace = workspace
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"mlportal-cli/{__version__}"
        self.session.headers["Accept"] = "application/json"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def api_url(self, path: str) -> str:
        return self.url + API_PREFIX + path.lstrip("/")

    def request(self, method: str, path: str, *, params: dict | None = None, workspace: bool = True,
                timeout: float | None = READ_TIMEOUT, auth: bool = True, **kwargs) -> requests.Response:
        """Sends one request to `/api/v1/<path>`; returns the response when it is a success, raises
        CliError (ApiError for an error answer) otherwise."""
        query = dict(params or {})
        if workspace and self.workspace and "workspace" not in query:
            query["workspace"] = self.workspace
        headers = dict(kwargs.pop("headers", None) or {})
        if not auth:
            headers["Authorization"] = None  # requests drops a header set to None
        try:
            response = self.session.request(method, self.api_url(path), params=query or None, headers=headers,
                                            timeout=(CONNECT_TIMEOUT, timeout), **kwargs)
        except requests.exceptions.InvalidURL as exc:
            raise CliError(f"'{self.url}' is not a usable portal URL: {exc}") from None
        except requests.exceptions.Timeout:
            raise Unreachable(f"the portal at {self.url} did not answer within {timeout or CONNECT_TIMEOUT} s") from None
        except requests.exceptions.ConnectionError as exc:
            raise Unreachable(f"cannot reach the portal at {self.url}: {_reason(exc)} "
                              "(is the portal running, and is the URL right?)") from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def get(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs).json()

    def get_patiently(self, path: str, *, say: Callable[[str], None], patience_s: float | None = None,
                      **kwargs) -> Any:
        """GET that rides out a portal restart: while the portal does not answer (or a proxy in
        front of it answers 502/503/504) it tries again with a back-off (0.5 s doubling to 5 s)
        for up to `patience_s` (MLPORTAL_CLI_RECONNECT_SECONDS, default 300), telling `say` that
        it is reconnecting, then that it is back. Raises the last error after that."""
        if patience_s is None:
            try:
                patience_s = float(os.environ.get("MLPORTAL_CLI_RECONNECT_SECONDS") or RECONNECT_SECONDS)
            except ValueError:
                raise CliError("MLPORTAL_CLI_RECONNECT_SECONDS must be a number of seconds") from None
        lost_at = None
        delay = RECONNECT_FIRST_S
        while True:
            try:
                body = self.get(path, **kwargs)
            except (Unreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status not in TRANSIENT_STATUSES:
                    raise
                now = time.monotonic()
                lost_at = lost_at or now
                if now - lost_at >= patience_s:
                    raise CliError(f"{exc.message}; gave up reconnecting after {patience_s:.0f} s "
                                   "(the work goes on in the portal)") from None
                say(f"… lost the portal ({exc.message}); reconnecting in {delay:g} s "
                    f"({now - lost_at:.0f} s of {patience_s:.0f} s)")
                time.sleep(delay)
                delay = min(RECONNECT_MAX_S, delay * 2)
                continue
            if lost_at is not None:
                say(f"… reconnected to the portal after {time.monotonic() - lost_at:.0f} s")
            return body

    def post(self, path: str, json: Any = None, **kwargs) -> Any:
        """POSTs with a fresh Idempotency-Key, so a create sent again (a retry after a lost answer)
        is done once by the portal and answered with the first result."""
        headers = {"Idempotency-Key": str(uuid.uuid4()), **dict(kwargs.pop("headers", None) or {})}
        response = self.request("POST", path, json=json, headers=headers, **kwargs)
        return response.json() if response.content else None

    def patch(self, path: str, json: Any = None, **kwargs) -> Any:
        return self.request("PATCH", path, json=json, **kwargs).json()

    def delete(self, path: str, **kwargs) -> Any:
        response = self.request("DELETE", path, **kwargs)
        return response.json() if response.content else None

    def pages(self, path: str, *, params: dict | None = None, limit: int | None = None) -> Iterator[tuple[dict, int]]:
        """Yields (item, total count) across the pages of a list endpoint, at most `limit` items."""
        query = {"page_size": min(PAGE_SIZE, limit) if limit else PAGE_SIZE, **(params or {})}
        page, seen = 1, 0
        while True:
            body = self.get(path, params={**query, "page": page})
            if isinstance(body, list):  # an endpoint without pagination
                for item in body[:limit] if limit else body:
                    yield item, len(body)
                return
            for item in body.get("results", []):
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item, body.get("count", 0)
            if not body.get("next") or (limit is not None and seen >= limit):
                return
            page += 1

    def list(self, path: str, *, params: dict | None = None, limit: int | None = None) -> tuple[list[dict], int]:
        """(items, total count) of a list endpoint, following its pages up to `limit` items."""
        items, total = [], 0
        for item, total in self.pages(path, params=params, limit=limit):
            items.append(item)
        return items, total

    def download(self, path: str, dest, *, params: dict | None = None, progress=None) -> int:
        """Streams a download into the open binary file `dest`; returns the number of bytes."""
        response = self.request("GET", path, params=params, stream=True, timeout=600,
                                headers={"Accept": "*/*"})
        size = 0
        with response:
            for chunk in response.iter_content(chunk_size=1024 * 1024):
                dest.write(chunk)
                size += len(chunk)
                if progress:
                    progress(size)
        return size
