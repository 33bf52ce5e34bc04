"""Docker clients and the error boundary of the compute package.

Every call into the Docker SDK happens inside :func:`engine_errors` (directly or through
:func:`connect`), which turns ``docker.errors.*``, ``requests`` and socket errors into
:class:`EngineError` with a one-line message a person can act on.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import docker
import docker.errors
import docker.types
import requests.exceptions
import urllib3.exceptions

LABEL_KIND = "mlportal.kind"
LABEL_ID = "mlportal.id"
LABEL_REPLICA = "mlportal.replica"
LABEL_PORTAL = "mlportal.portal"  # which portal installation started a container: sweeps touch only their own

DEFAULT_ENGINE_URL = "unix:///var/run/docker.sock"

# Every container MLPortal starts keeps at most 3 log files of 10 MB (json-file, the driver the
# logs API reads): a chatty run() or a flood of access-log lines cannot fill the engine's disk.
LOG_MAX_SIZE = os.environ.get("MLPORTAL_CONTAINER_LOG_MAX_SIZE", "10m")
LOG_MAX_FILES = os.environ.get("MLPORTAL_CONTAINER_LOG_MAX_FILES", "3")


def container_log_config() -> docker.types.LogConfig:
    """Returns the rotated json-file log configuration of MLPortal's service and run containers."""
    return docker.types.LogConfig(type="json-file", config={"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES})


class EngineError(Exception):
    """The Docker engine is unreachable or answered with an error.

    ``str()`` is one line a user can act on; ``log_tail`` holds extra lines (build or container
    logs) when there are any.
    """

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail


class EngineUnreachable(EngineError):
    """The engine could not be reached at all (a transient error worth a retry)."""


class EngineNotAllowed(EngineError):
    """The portal may not connect to this address (its allowlist); nothing was sent there."""


_guard: Callable[[str | None], str | None] | None = None


def set_engine_guard(guard: Callable[[str | None], str | None] | None) -> None:
    """Installs the check every connection goes through first: ``guard(base_url)`` returns the URL
    to connect to, or raises EngineNotAllowed (the Django side installs the portal's allowlist)."""
    global _guard
    _guard = guard


class BuildError(EngineError):
    """An image build failed; ``step`` is the Dockerfile step at fault (or a named stage such as
    ``"resolve requirements"``) and ``log_tail`` the last lines of the build log."""

    def __init__(self, message: str, *, step: str = "", log_tail: str = "") -> None:
        super().__init__(message, log_tail=log_tail)
        self.step = step


def engine_url(base_url: str | None) -> str:
    """Returns the address a client for ``base_url`` talks to, for messages."""
    return base_url or os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE_URL


def _connection_reason(exc: BaseException) -> str | None:
    """Returns a short reason when ``exc`` (or an exception it wraps) is a connection failure,
    else None. The SDK buries the socket error several levels down, in causes and in text."""
    seen: set[int] = set()
    text_parts = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text_parts.append(str(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, FileNotFoundError):
            return "no socket at that path"
        if isinstance(current, PermissionError):
            return "permission denied on the socket (is this user in the docker group?)"
        if isinstance(current, (socket.timeout, TimeoutError)):
            return "timed out"
        if isinstance(current, OSError) and current.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "host unreachable"
        current = current.__cause__ or current.__context__
    text = " ".join(text_parts)
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("No such file or directory", "no socket at that path"),
        ("Permission denied", "permission denied on the socket (is this user in the docker group?)"),
        ("timed out", "timed out"),
        ("Name or service not known", "host name not found"),
        ("Connection aborted", "connection aborted"),
        ("Connection reset", "connection reset"),
    ):
        if needle in text:
            return reason
    if isinstance(exc, (requests.exceptions.ConnectionError, urllib3.exceptions.HTTPError)):
        # Not its text: a port that is not a Docker engine answers with its own bytes.
        return "the connection failed without an answer a Docker client understands"
    return None


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def translate_error(exc: BaseException, base_url: str | None) -> EngineError:
    """Returns the EngineError that stands for an SDK, requests or socket error."""
    url = engine_url(base_url)
    reason = _connection_reason(exc)
    if reason is not None and not isinstance(exc, docker.errors.APIError):
        return EngineUnreachable(
            f"Docker engine unreachable at {url}: {reason}. Start the engine or point the portal "
            f"at a running one."
        )
    if isinstance(exc, docker.errors.APIError):
        if not _answered_like_docker(exc):
            return EngineUnreachable(f"{url} did not answer like a Docker engine: check the engine URL.")
        explanation = exc.explanation or str(exc)
        if isinstance(explanation, bytes):
            explanation = explanation.decode("utf-8", "replace")
        status = exc.status_code
        return EngineError(f"Docker engine error ({status}) at {url}: {_one_line(str(explanation))}")
    if url.startswith(("tcp://", "ssh://", "http://", "https://")):
        # What a remote port answered is never repeated: it may be another service's reply.
        return EngineUnreachable(f"{url} did not answer like a Docker engine: check the engine URL.")
    return EngineError(f"Docker engine error at {url}: {_one_line(str(exc)) or type(exc).__name__}")


def _answered_like_docker(exc: docker.errors.APIError) -> bool:
    """Whether the error response came from a Docker engine (its API-version header), not from
    some other service listening at that address."""
    response = getattr(exc, "response", None)
    if response is None:
        return True  # raised by the SDK itself
    headers = getattr(response, "headers", {}) or {}
    return bool(headers.get("Api-Version") or "docker" in str(headers.get("Server", "")).lower())


ENGINE_EXCEPTIONS = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
)


@contextmanager
def engine_errors(base_url: str | None = None) -> Iterator[None]:
    """Turns every Docker SDK / connection error raised inside the block into EngineError."""
    try:
        yield
    except EngineError:
        raise
    except ENGINE_EXCEPTIONS as exc:
        raise translate_error(exc, base_url) from exc


def get_client(base_url: str | None = None, *, timeout: int = 60) -> docker.DockerClient:
    """Returns a connected client for ``base_url`` (None: the local engine named by the
    environment, ``DOCKER_HOST`` or the default socket). ``timeout`` is the socket timeout of
    each API call. Raises EngineError when the engine cannot be reached."""
    if _guard is not None:
        base_url = _guard(base_url)
    with engine_errors(base_url):
        if base_url is None:
            return docker.from_env(timeout=timeout)
        return docker.DockerClient(base_url=base_url, timeout=timeout)


@contextmanager
def connect(base_url: str | None = None, *, timeout: int = 60) -> Iterator[docker.DockerClient]:
    """Yields a client and closes it afterwards; SDK errors in the block become EngineError."""
    client = get_client(base_url, timeout=timeout)
    try:
        with engine_errors(base_url):
            yield client
    finally:
        client.close()


def engine_status(base_url: str | None = None) -> dict:
    """Returns ``{"ok", "version", "error"}`` for the engine at ``base_url`` within a few
    seconds; never raises for an unreachable engine."""
    try:
        with connect(base_url, timeout=5) as client:
            version = client.version().get("Version")
    except EngineError as exc:
        return {"ok": False, "version": None, "error": str(exc)}
    return {"ok": True, "version": version, "error": None}


def is_not_found(exc: BaseException) -> bool:
    """True when ``exc`` is the SDK's 404 (the object is gone)."""
    return isinstance(exc, docker.errors.NotFound)


def image_id(ref: str, *, base_url: str | None = None) -> str | None:
    """Returns the id of the image ``ref`` (a tag or an id), or None when the engine lacks it."""
    with connect(base_url, timeout=30) as client:
        try:
            return client.images.get(ref).id
        except docker.errors.NotFound:
            return None
