"""The scoring server of a service image: pre-fork, keep-alive HTTP/1.1; llhttp (httptools) frames the requests.

    python -m mlportal_runtime.server --app-dir /app --port 5001 [--workers N] [--host 0.0.0.0]

The master binds one socket and forks N workers. Each worker chdir's to the app dir, imports
``score.py``, calls ``init()`` once, then serves from an epoll loop: many keep-alive
connections per worker, requests handled one at a time (``run()`` is CPU-bound; the workers
are the parallelism). The master respawns a worker that dies, kills one stuck in a request
past the timeout, and stops all on SIGTERM/SIGINT.

Hostile input: llhttp does the HTTP framing, strictly (see RequestReader); what it refuses is
answered 400 and the connection closed. A request's head must arrive within a deadline, its
body within another, and JSON bodies may nest only so deep. No exception raised while one
request is handled ends a worker: it answers 400 or 500 and goes on. The access log escapes
control bytes, so a request cannot forge a log line or reach the terminal of whoever reads it.

Environment: MLPORTAL_SERVICE_NAME, MLPORTAL_SERVICE_KEYS (``primary,secondary``; when set,
scoring needs ``Authorization: Bearer <key>``; MLPORTAL_SERVICE_KEYS_FILE / MLPORTAL_INTERNAL_KEY_FILE
name files to read them from instead, as Swarm secrets), MLPORTAL_WORKERS (default: the CPUs this
process may use, capped by the container's CPU quota), MLPORTAL_MAX_BODY_BYTES (default 1 MiB),
MLPORTAL_REQUEST_TIMEOUT (seconds a scoring request may run, default 60; ``0`` lifts the limit),
MLPORTAL_HEAD_TIMEOUT / MLPORTAL_BODY_TIMEOUT (seconds a request's head / body may take to arrive,
default 10 / 60), MLPORTAL_MAX_JSON_DEPTH (default 64), MLPORTAL_ACCESS_LOG (``0`` turns the per-request line off),
MLPORTAL_MODEL_VERSION (shown by the OIP metadata), MLPORTAL_PREIMPORT (``0`` stops the master
importing the modules the model files name before it forks; for libraries not safe to fork),
MLPORTAL_STOP_DRAIN_SECONDS (default 0: on the first SIGTERM, keep serving this long before
stopping, so whoever routes to it has stopped first: Swarm stops a task the moment it scales
down or rolls, before the portal's gateway has dropped it; a second signal stops at once).

Cold start: before forking, the master imports numpy/pandas when the schema needs them and the
modules named by the app's pickle files (read with pickletools, never unpickled), builds the
schema's converters once, and freezes its heap out of the collector's reach, so the workers
share all of it instead of each importing scikit-learn at once under a small CPU quota.

Endpoints: ``POST /score``, ``POST /api/v1/service/<name>/score``, ``GET /health``,
``GET /ready``, ``GET /swagger.json``, ``GET /metrics`` and the Open Inference Protocol v2
(``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/<name>[/ready|/infer]``).
Scoring endpoints need the key when keys are set; probes, documents and metrics do not.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hmac
import importlib.util
import inspect
import json
import math
import mmap
import os
import re
import select
import signal
import socket
import sqlite3
import sys
import threading
import time
import traceback
from typing import Any, Callable

try:
    import httptools
except ImportError:  # pragma: no cover - the environment image installs it with the runtime
    raise SystemExit("mlportal: the scoring server needs the 'httptools' package (llhttp); "
                     "rebuild the environment image, or pip install httptools") from None

from mlportal_runtime import capture, collector, oip
from mlportal_runtime.pickles import SCAN_MAX_OPCODES, scan_pickle
from mlportal_runtime.schema import SchemaError, build_inputs, example_body, load_schema, openapi_document

EXIT_INIT_FAILED = 3
DEFAULT_MAX_BODY = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024  # request line and header fields together
MAX_HEADERS = 100
MAX_TRAILERS = 32
MAX_FRAMING_BYTES = 64 * 1024  # chunk-size lines, chunk extensions and trailers of one body
MAX_CHUNKS = 16384
MAX_JSON_DEPTH = 64  # nesting of arrays/objects in a request body
DEFAULT_REQUEST_TIMEOUT = 60.0  # seconds a scoring request may run (MLPORTAL_REQUEST_TIMEOUT, 0 = none)
DEFAULT_HEAD_TIMEOUT = 10.0  # seconds from a request's first byte to the end of its head
DEFAULT_BODY_TIMEOUT = 60.0  # seconds from the end of the head to the end of the body
KEEPALIVE_TIMEOUT = 30.0  # seconds a connection may sit idle
KILL_GRACE = 2.0  # seconds past the request timeout before the master kills a stuck worker
SCHEMA_FILE = "service_schema.json"
SCORE_FILE = "score.py"
SERVER_NAME = "mlportal"

REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}
JSON_TYPE = b"application/json"
CAPTURE_PATH = "/_mlportal/capture"  # the portal's pull of captured rows (internal key only)


class RequestTimeout(BaseException):
    """Raised by SIGALRM inside a request; a BaseException so ``except Exception`` in run() lets it through."""


class HttpError(Exception):
    """A request the server answers with an error status (and, when ``close``, closes the connection)."""

    def __init__(self, status: int, code: str, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close = close


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class Config:
    def __init__(self, args: argparse.Namespace) -> None:
        env = os.environ
        self.app_dir = os.path.abspath(args.app_dir)
        self.host = args.host
        self.port = args.port
        self.workers = args.workers or _env_int("MLPORTAL_WORKERS", 0) or default_workers()
        self.service_name = env.get("MLPORTAL_SERVICE_NAME", "").strip() or "model"
        self.model_version = env.get("MLPORTAL_MODEL_VERSION", "").strip() or None
        keys = _env_or_file(env, "MLPORTAL_SERVICE_KEYS")
        self.keys = [k.strip().encode() for k in keys.split(",") if k.strip()]
        self.max_body = _env_int("MLPORTAL_MAX_BODY_BYTES", DEFAULT_MAX_BODY)
        self.timeout = _env_float("MLPORTAL_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT) or None
        self.head_timeout = _env_float("MLPORTAL_HEAD_TIMEOUT", DEFAULT_HEAD_TIMEOUT) or DEFAULT_HEAD_TIMEOUT
        self.body_timeout = _env_float("MLPORTAL_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT) or DEFAULT_BODY_TIMEOUT
        self.max_json_depth = _env_int("MLPORTAL_MAX_JSON_DEPTH", MAX_JSON_DEPTH) or MAX_JSON_DEPTH
        self.access_log = _env_flag("MLPORTAL_ACCESS_LOG")
        self.preimport = _env_flag("MLPORTAL_PREIMPORT")
        self.score_file = args.score_file
        self.schema_file = args.schema_file
        self.internal_key = _env_or_file(env, "MLPORTAL_INTERNAL_KEY").strip().encode()
        self.stop_drain = max(0.0, _env_float("MLPORTAL_STOP_DRAIN_SECONDS", 0.0) or 0.0)
        self.capture = True  # main() turns it off when the spool cannot be made


def _env_or_file(env, name: str) -> str:
    """The value of ``name``, or the contents of the file ``<name>_FILE`` names (a Swarm secret
    under /run/secrets: keys that never appear in the container's environment)."""
    path = env.get(f"{name}_FILE", "").strip()
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    return env.get(name, "")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"mlportal: {name}={raw!r} is not an integer") from None
    if value < 0:
        raise SystemExit(f"mlportal: {name} must not be negative")
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"mlportal: {name}={raw!r} is not a number of seconds") from None
    if not value >= 0:
        raise SystemExit(f"mlportal: {name} must not be negative")
    return value


def _env_flag(name: str) -> bool:
    """Return False when the variable says 0/false/no/off; on by default."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> int:
    """Return the default worker count: the usable CPUs, capped by the cgroup CPU quota rounded up.

    Docker's ``--cpus 1`` on a many-core host leaves every core in the affinity mask; one worker
    per core would then share one CPU's worth of time slices and only add memory and context
    switches.
    """
    cpus = _cpu_count()
    quota = cgroup_cpu_quota(root, self_cgroup)
    if quota is None:
        return cpus
    return max(1, min(cpus, math.ceil(quota - 1e-9)))


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> float | None:
    """Return this process's CPU quota in CPUs (``1.5`` for 150 ms per 100 ms), None when unlimited or unknown.

    Reads cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in the
    process's own cgroup and each parent (the tightest wins). Inside a container the mount often
    is the container's own cgroup while /proc/self/cgroup names the host's path to it; missing
    levels are skipped, so the mount's root is read then.
    """
    try:
        with open(self_cgroup, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        lines = []
    v2_path, v1_path = "/", "/"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and not parts[1]:
            v2_path = parts[2] or "/"
        elif "cpu" in parts[1].split(","):
            v1_path = parts[2] or "/"
    limits = [q for q in (_quota_in(root, v2_path, _read_cpu_max),) if q is not None]
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota = _quota_in(os.path.join(root, mount), v1_path, _read_cfs_quota)
        if quota is not None:
            limits.append(quota)
            break
    return min(limits) if limits else None


def _quota_in(mount: str, path: str, read: Callable[[str], float | None]) -> float | None:
    """Return the tightest quota ``read`` finds in ``mount``/path and each of its parents up to ``mount``."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    found = []
    for depth in range(len(parts), -1, -1):
        quota = read(os.path.join(mount, *parts[:depth]))
        if quota is not None:
            found.append(quota)
    return min(found) if found else None


def _read_cpu_max(folder: str) -> float | None:
    try:
        with open(os.path.join(folder, "cpu.max"), encoding="ascii") as handle:
            fields = handle.read().split()
        if len(fields) != 2 or fields[0] == "max":
            return None
        quota, period = int(fields[0]), int(fields[1])
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read_cfs_quota(folder: str) -> float | None:
    try:
        with open(os.path.join(folder, "cpu.cfs_quota_us"), encoding="ascii") as handle:
            quota = int(handle.read().strip())
        with open(os.path.join(folder, "cpu.cfs_period_us"), encoding="ascii") as handle:
            period = int(handle.read().strip())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _log(message: str) -> None:
    sys.stderr.write(f"mlportal: {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Shared counters: one row of doubles per worker in an anonymous shared mapping made before the
# fork. Each worker writes only its own row, so no lock is needed; /metrics sums the rows.
# --------------------------------------------------------------------------------------------

HANDLERS = ("score", "infer", "health", "ready", "metadata", "swagger", "metrics", "other")
CODES = (200, 400, 401, 404, 405, 408, 411, 413, 431, 500, 501, 503, 504, 505, 0)  # 0: any other
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
_CODE_INDEX = {code: i for i, code in enumerate(CODES)}
_HANDLER_INDEX = {name: i for i, name in enumerate(HANDLERS)}
F_PID, F_BUSY, F_READY, F_LAT_SUM, F_ERR_RUN, F_ERR_TIMEOUT, F_RESTARTS, F_KILLED, F_CONNS = range(9)
F_HIST = 9
F_REQ = F_HIST + len(BUCKETS)
ROW = F_REQ + len(HANDLERS) * len(CODES)


class Stats:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._map = mmap.mmap(-1, 8 * ROW * workers)
        self.cells = (ctypes.c_double * (ROW * workers)).from_buffer(self._map)

    def row(self, index: int) -> "Row":
        return Row(self.cells, index * ROW)

    def any_ready(self) -> bool:
        return any(self.cells[i * ROW + F_READY] for i in range(self.workers))

    def fewest_connections_elsewhere(self, me: int, idle_only: bool = True) -> float:
        """Return the fewest open connections among the other ready (and idle) workers, inf if none."""
        cells = self.cells
        best = float("inf")
        for i in range(self.workers):
            base = i * ROW
            if i != me and cells[base + F_READY] and not (idle_only and cells[base + F_BUSY]):
                best = min(best, cells[base + F_CONNS])
        return best

    def total(self, field: int) -> float:
        return sum(self.cells[i * ROW + field] for i in range(self.workers))

    def prometheus(self, configured_workers: int) -> bytes:
        cells, workers = self.cells, self.workers
        lines = [
            "# HELP mlportal_requests_total HTTP requests answered, by handler and status code.",
            "# TYPE mlportal_requests_total counter",
        ]
        for h, handler in enumerate(HANDLERS):
            for c, code in enumerate(CODES):
                field = F_REQ + h * len(CODES) + c
                count = sum(cells[w * ROW + field] for w in range(workers))
                if count:
                    label = str(code) if code else "other"
                    lines.append(f'mlportal_requests_total{{handler="{handler}",code="{label}"}} {count:.0f}')
        lines += [
            "# HELP mlportal_scoring_errors_total Scoring requests that failed: run() raised (exception) or ran past the timeout (timeout).",
            "# TYPE mlportal_scoring_errors_total counter",
            f'mlportal_scoring_errors_total{{reason="exception"}} {self.total(F_ERR_RUN):.0f}',
            f'mlportal_scoring_errors_total{{reason="timeout"}} {self.total(F_ERR_TIMEOUT):.0f}',
            "# HELP mlportal_request_duration_seconds Time to answer scoring requests (score and infer).",
            "# TYPE mlportal_request_duration_seconds histogram",
        ]
        cumulative = 0.0
        for b, bound in enumerate(BUCKETS):
            cumulative += self.total(F_HIST + b)
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'mlportal_request_duration_seconds_bucket{{le="{le}"}} {cumulative:.0f}')
        lines += [
            f"mlportal_request_duration_seconds_sum {self.total(F_LAT_SUM):.6f}",
            f"mlportal_request_duration_seconds_count {cumulative:.0f}",
            "# HELP mlportal_workers Worker processes configured.",
            "# TYPE mlportal_workers gauge",
            f"mlportal_workers {configured_workers}",
            "# HELP mlportal_workers_ready Workers whose init() has finished.",
            "# TYPE mlportal_workers_ready gauge",
            f"mlportal_workers_ready {self.total(F_READY):.0f}",
            "# HELP mlportal_worker_restarts_total Workers started again after one died or was killed.",
            "# TYPE mlportal_worker_restarts_total counter",
            f"mlportal_worker_restarts_total {self.total(F_RESTARTS):.0f}",
            "# HELP mlportal_worker_kills_total Workers killed by the master for running past the request timeout.",
            "# TYPE mlportal_worker_kills_total counter",
            f"mlportal_worker_kills_total {self.total(F_KILLED):.0f}",
        ]
        return ("\n".join(lines) + "\n").encode()


class Row:
    __slots__ = ("cells", "base")

    def __init__(self, cells: Any, base: int) -> None:
        self.cells = cells
        self.base = base

    def __getitem__(self, field: int) -> float:
        return self.cells[self.base + field]

    def __setitem__(self, field: int, value: float) -> None:
        self.cells[self.base + field] = value

    def count(self, handler: str, status: int, seconds: float | None) -> None:
        cells, base = self.cells, self.base
        cells[base + F_REQ + _HANDLER_INDEX[handler] * len(CODES) + _CODE_INDEX.get(status, len(CODES) - 1)] += 1
        if seconds is not None:
            cells[base + F_LAT_SUM] += seconds
            for b, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    cells[base + F_HIST + b] += 1
                    break


# --------------------------------------------------------------------------------------------
# HTTP/1.1 parsing and responses
# --------------------------------------------------------------------------------------------


class Request:
    __slots__ = ("method", "target", "path", "version", "headers", "body", "keep_alive", "request_id")

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str], body: bytes,
                 keep_alive: bool = True) -> None:
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.request_id = ""


HEAD, BODY, IDLE = 1, 2, 0


class RequestReader:
    """Turns the bytes of one connection into Requests, with llhttp (httptools) doing the framing.

    ``feed(data)`` appends every request the bytes complete to ``ready`` and returns the
    HttpError that ends the connection, if any (the requests completed before it are still
    answered first). llhttp refuses, among others: Content-Length with Transfer-Encoding, a
    Content-Length that is not ASCII digits, two Content-Lengths, chunk sizes that are not hex
    digits (``+1_0``, ``0x2``, `` 2 ``), a bare LF or CR anywhere in the head, control bytes in
    the target or a header, obs-fold. On top of it this refuses a Transfer-Encoding other than
    the single token ``chunked``, HTTP versions other than 1.0/1.1, an Upgrade carrying a body,
    and bounds what it holds: the head (``MAX_HEADER_BYTES``, ``MAX_HEADERS`` fields), the
    body (``max_body``), the chunked framing (chunk-size lines, extensions and trailers:
    ``MAX_FRAMING_BYTES``, ``MAX_CHUNKS``, ``MAX_TRAILERS``). llhttp reads each byte once and
    keeps none, so the work is linear in what arrives.

    ``head_started`` is when the first byte of a request whose head is not complete arrived
    (0 otherwise): the worker answers 408 when the head takes longer than its deadline.
    """

    __slots__ = ("parser", "max_body", "ready", "phase", "serial", "url", "raw_headers", "headers",
                 "body", "body_len", "framing", "chunks", "trailers", "head_started", "body_started",
                 "continue_wanted", "path_hint", "version")

    def __init__(self, max_body: int) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.max_body = max_body
        self.ready: list[Request] = []
        self.phase = IDLE
        self.serial = 0
        self.head_started = 0.0
        self.body_started = 0.0
        self.continue_wanted = False
        self.path_hint = ""
        self.version = "HTTP/1.1"
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_len = self.framing = self.chunks = self.trailers = 0

    # -- llhttp callbacks (an HttpError raised here ends the connection). Kept lean: they run
    # for every request. The head's fields are gathered raw and checked once it is complete
    # (one feed holds at most one recv(); across feeds, feed() bounds what piles up).

    def on_message_begin(self) -> None:
        self.phase = HEAD
        self.serial += 1
        self.head_started = time.monotonic()
        self.url = b""
        self.raw_headers = []
        self.body = []
        self.body_len = self.framing = self.chunks = self.trailers = 0

    def on_url(self, url: bytes) -> None:
        self.url = self.url + url if self.url else url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase == BODY:
            self._trailer(name, value)
        else:
            self.raw_headers.append((name, value))

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field of a chunked body: counted and bounded, then dropped."""
        self.trailers += 1
        self.framing += len(name) + len(value) + 4
        if self.trailers > MAX_TRAILERS:
            raise HttpError(400, "bad_request", f"more than {MAX_TRAILERS} trailer fields", close=True)
        if self.framing > MAX_FRAMING_BYTES:
            raise HttpError(400, "bad_request", f"the chunked framing (size lines, extensions, trailers) is larger than {MAX_FRAMING_BYTES // 1024} KiB", close=True)

    def on_headers_complete(self) -> None:
        self.phase = BODY
        self.framing = 0
        self.head_started = 0.0
        self.body_started = time.monotonic()
        url = self.url
        raw = self.raw_headers
        self.path_hint = url[:200].decode("latin-1")
        if len(raw) > MAX_HEADERS:
            raise HttpError(431, "header_too_large", f"the request has more than {MAX_HEADERS} header fields", close=True)
        size = len(url)
        headers: dict[str, str] = {}
        for name, value in raw:
            size += len(name) + len(value) + 4
            key = name.decode("latin-1").lower()
            if key in headers:
                headers[key] = headers[key] + ", " + value.decode("latin-1")
            else:
                headers[key] = value.decode("latin-1")
        self.headers = headers
        if size > MAX_HEADER_BYTES:
            raise HttpError(431, "header_too_large", f"the request head is larger than {MAX_HEADER_BYTES // 1024} KiB", close=True)
        version = self.parser.get_http_version()
        if version == "1.1":
            self.version = "HTTP/1.1"
        elif version == "1.0":
            self.version = "HTTP/1.0"
        else:
            raise HttpError(505, "http_version", f"HTTP/{version} is not supported; use HTTP/1.1", close=True)
        coding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if coding is not None and coding.lower() != "chunked":
            raise HttpError(501, "not_implemented", "only Transfer-Encoding: chunked is supported (one coding, no list)", close=True)
        if length is not None and int(length) > self.max_body:  # llhttp let only ASCII digits through
            raise HttpError(413, "body_too_large", f"the body is {int(length)} bytes; this service accepts at most {self.max_body}", close=True)
        if "expect" in headers and self.version == "HTTP/1.1" and headers["expect"].lower() == "100-continue" \
                and (coding is not None or (length is not None and length != "0")):
            self.continue_wanted = True

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)
        if self.body_len > self.max_body:
            raise HttpError(413, "body_too_large", f"the body is larger than {self.max_body} bytes", close=True)
        self.body.append(body)

    def on_chunk_header(self) -> None:
        self.chunks += 1
        if self.chunks > MAX_CHUNKS:
            raise HttpError(400, "bad_request", f"the body comes in more than {MAX_CHUNKS} chunks; send larger chunks", close=True)

    def on_message_complete(self) -> None:
        parser = self.parser
        body = self.body
        self.ready.append(Request(parser.get_method().decode("ascii"), self.url.decode("latin-1"), self.version,
                                  self.headers, body[0] if len(body) == 1 else b"".join(body), parser.should_keep_alive()))
        self.phase = IDLE
        self.body_started = 0.0
        self.continue_wanted = False

    # -- driving ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> HttpError | None:
        """Parse ``data``; complete requests go to ``ready``; returns the error that ends the connection."""
        phase, serial, body_len = self.phase, self.serial, self.body_len
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp stops at an Upgrade (or CONNECT) request without reading a body: a plain
            # GET/HEAD is answered and the connection closed; anything else is refused.
            last = self.ready[-1] if self.ready else None
            if last is None or last.method not in ("GET", "HEAD") or last.headers.get("content-length", "0") != "0" \
                    or "transfer-encoding" in last.headers:
                if last is not None:
                    self.ready.pop()
                return HttpError(400, "bad_request", "protocol upgrades (and CONNECT) are not supported; send plain HTTP/1.1 without Upgrade", close=True)
            last.keep_alive = False
            return None
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpError):
                return cause
            return HttpError(400, "bad_request", f"the request could not be read: {cause or exc}", close=True)
        except httptools.HttpParserError as exc:
            reason = str(exc) or type(exc).__name__
            return HttpError(400, "bad_request", f"malformed request: {reason}", close=True)
        # What llhttp skipped without a callback (whitespace, chunk-size lines and extensions)
        # is bounded too: a feed that began and ended inside one head (or one body) counts whole.
        if self.serial == serial and self.phase == phase:
            if phase == HEAD:
                self.framing += len(data)
                if self.framing > MAX_HEADER_BYTES:
                    return HttpError(431, "header_too_large", f"the request head is larger than {MAX_HEADER_BYTES // 1024} KiB", close=True)
            elif phase == BODY:
                self.framing += len(data) - (self.body_len - body_len)
                if self.framing > MAX_FRAMING_BYTES:
                    return HttpError(400, "bad_request", f"the chunked framing (size lines, extensions, trailers) is larger than {MAX_FRAMING_BYTES // 1024} KiB", close=True)
        return None


def response_bytes(status: int, body: bytes, content_type: bytes = JSON_TYPE, keep_alive: bool = True,
                   extra: bytes = b"", head_only: bool = False) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nServer: mlportal\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
        status, REASONS.get(status, "Unknown").encode(), content_type, len(body), extra,
        b"" if keep_alive else b"Connection: close\r\n",
    )
    return head if head_only else head + body


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a valid JSON number")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_deeper_than(body: bytes, limit: int) -> bool:
    """Return True when the valid JSON text ``body`` nests arrays/objects more than ``limit`` deep.

    Linear in the body for each level up to ``limit``: strings are dropped, then the innermost
    ``[]``/``{}`` pairs are removed once per level. A body with no more brackets than ``limit``
    cannot be deeper, and costs two counts.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _JSON_INNERMOST.sub(b"", brackets)
    return bool(brackets)


def parse_json_body(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    if not body.strip():
        raise HttpError(400, "invalid_json", "the request body is empty; send a JSON object")
    too_deep = HttpError(400, "invalid_json", f"the request body nests arrays/objects deeper than {max_depth} levels; flatten it")
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise HttpError(400, "invalid_json", "the request body is not UTF-8 JSON") from None
    except ValueError as exc:
        raise HttpError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise too_deep from None
    # Valid JSON from here on, so its strings are well formed and the depth scan stays linear.
    if json_deeper_than(body if isinstance(body, bytes) else bytes(body), max_depth):
        raise too_deep
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # DataFrame
        return value.to_dict(orient="records")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"run() returned a {type(value).__name__}, which cannot be sent as JSON")


def encode_result(result: Any) -> bytes:
    """Return the JSON bytes for what run() returned; a str that is JSON already goes out as is."""
    if isinstance(result, (bytes, bytearray)):
        result = bytes(result).decode("utf-8", "replace")
    if isinstance(result, str):
        try:
            json.loads(result, parse_constant=_reject_constant)
            return result.encode()
        except ValueError:
            return json.dumps(result).encode()
    try:
        return json.dumps(result, default=_json_default, allow_nan=False).encode()
    except ValueError as exc:
        raise ValueError(f"run() returned a value JSON cannot carry ({exc}); replace NaN/Infinity") from None


# --------------------------------------------------------------------------------------------
# The application: routing and handlers (one instance per worker)
# --------------------------------------------------------------------------------------------


class App:
    def __init__(self, config: Config, schema: Any, openapi: bytes, stats: Stats, worker_index: int) -> None:
        self.config = config
        self.schema = schema
        self.openapi = openapi
        self.stats = stats
        self.row = stats.row(worker_index)
        self.worker = worker_index
        self.ready = False
        self.run: Callable[..., Any] | None = None
        self.run_takes_raw = False
        self.keys = config.keys
        self.name = config.service_name
        self.api_prefix = "/api/v1/service/"
        self.model_prefix = "/v2/models/"
        self.init_error: str | None = None
        self.spool = capture.Spool() if config.capture else None

    # -- lifecycle -------------------------------------------------------------------------

    def load_module(self) -> None:
        """Import score.py and call init() once; raises what init() raised."""
        path = os.path.join(self.config.app_dir, self.config.score_file)
        module_name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # pickles may name classes defined in score.py
        spec.loader.exec_module(module)
        run = getattr(module, "run", None)
        if not callable(run):
            raise RuntimeError(f"{self.config.score_file} has no run() function")
        init = getattr(module, "init", None)
        if callable(init):
            init()
        else:
            _log(f"{self.config.score_file} has no init(); nothing to load")
        self.run = run
        if self.schema is None:
            self.run_takes_raw = True
        else:
            parameters = inspect.signature(run).parameters
            takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
            missing = [n for n in self.schema.inputs if n not in parameters and not takes_kwargs]
            if missing:
                raise RuntimeError(f'run() has no parameter "{missing[0]}" that service_schema.json names; regenerate the schema')

    # -- dispatch --------------------------------------------------------------------------

    def handle(self, request: Request) -> tuple[int, bytes, bytes, bytes, str]:
        """Return (status, body, content type, extra headers, handler label) for a request."""
        path = request.path
        method = request.method
        try:
            if path == CAPTURE_PATH:
                return self._capture(request)
            if path == "/score" or (path.startswith(self.api_prefix) and path.endswith("/score")):
                if path != "/score" and path[len(self.api_prefix):-len("/score")] != self.name:
                    raise HttpError(404, "not_found", f"no service named {path[len(self.api_prefix):-6]!r} here; this is {self.name!r}")
                if method != "POST":
                    raise HttpError(405, "method_not_allowed", "score with POST and a JSON body")
                return self._score(request)
            if path.startswith("/v2"):
                return self._oip(request)
            if method not in ("GET", "HEAD"):
                if path in ("/health", "/ready", "/swagger.json", "/metrics", "/"):
                    raise HttpError(405, "method_not_allowed", f"use GET for {path}")
                raise HttpError(404, "not_found", f"nothing at {path}")
            if path == "/health":
                return 200, b'{"status":"alive"}', JSON_TYPE, b"", "health"
            if path == "/ready":
                return self._ready("ready")
            if path == "/swagger.json":
                return 200, self.openapi, JSON_TYPE, b"", "swagger"
            if path == "/metrics":
                return 200, self.stats.prometheus(self.stats.workers), b"text/plain; version=0.0.4", b"", "metrics"
            if path == "/":
                body = json.dumps({"service": self.name, "ready": self.ready, "score": "/score", "openapi": "/swagger.json"}).encode()
                return 200, body, JSON_TYPE, b"", "other"
            raise HttpError(404, "not_found", f"nothing at {path}")
        except HttpError as exc:
            handler = "score" if path.endswith("/score") else "infer" if path.endswith("/infer") else "other"
            if path.startswith("/v2"):
                return exc.status, json.dumps({"error": exc.message}).encode(), JSON_TYPE, self._auth_header(exc), handler
            return exc.status, error_body(exc.code, exc.message), JSON_TYPE, self._auth_header(exc), handler

    @staticmethod
    def _auth_header(exc: HttpError) -> bytes:
        if exc.status == 401:
            return b'WWW-Authenticate: Bearer realm="mlportal"\r\n'
        if exc.status == 405:
            return b"Allow: POST\r\n" if exc.message.startswith("score") or "POST" in exc.message else b"Allow: GET, HEAD\r\n"
        return b""

    def _ready(self, label: str, oip: bool = False) -> tuple[int, bytes, bytes, bytes, str]:
        ready = self.ready
        if oip:
            return (200 if ready else 503), json.dumps({"ready": ready}).encode(), JSON_TYPE, b"", label
        body = b'{"status":"ready"}' if ready else b'{"status":"loading"}'
        return (200 if ready else 503), body, JSON_TYPE, b"", label

    def _check_key(self, request: Request) -> None:
        if not self.keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise HttpError(401, "unauthorized", "this service needs a key: send Authorization: Bearer <key>")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError(401, "unauthorized", "send the key as Authorization: Bearer <key>")
        given = token.strip().encode("latin-1", "replace")
        matched = False
        for key in self.keys:  # compare with every key so timing says nothing about which matched
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise HttpError(401, "unauthorized", "the service key is wrong")

    def _capture(self, request: Request) -> tuple[int, bytes, bytes, bytes, str]:
        """The portal's pull of captured rows: 404 to anyone without the internal key."""
        key = self.config.internal_key
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode("latin-1", "replace")
        if not key or scheme.lower() != "bearer" or not hmac.compare_digest(given, key) or self.spool is None:
            raise HttpError(404, "not_found", f"nothing at {request.path}")
        if request.method != "POST":
            raise HttpError(405, "method_not_allowed", "pull with POST")
        body = parse_json_body(request.body or b"{}", self.config.max_json_depth)
        if not isinstance(body, dict):
            raise HttpError(400, "invalid_input", 'send an object {"ack", "settings", "limit"}')
        ack, limit, settings = body.get("ack"), body.get("limit", 1000), None
        if ack is not None and (isinstance(ack, bool) or not isinstance(ack, int) or ack < 0):
            raise HttpError(400, "invalid_input", "ack must be the last sequence number stored, or null")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= capture.MAX_PULL_ROWS:
            raise HttpError(400, "invalid_input", f"limit must be an integer from 1 to {capture.MAX_PULL_ROWS}")
        if body.get("settings") is not None:
            settings, errors = capture.check_settings(body["settings"])
            if errors:
                raise HttpError(400, "invalid_input", "; ".join(errors.values()))
        return 200, self.spool.pull_text(ack, settings, limit).encode(), JSON_TYPE, b"", "other"

    def _sample(self) -> str | None:
        """Whether this request is captured (its mode) or not (None); starts score.py's collectors."""
        try:
            mode = self.spool.sampled() if self.spool is not None else None
        except Exception as exc:  # noqa: BLE001 - capture is best effort next to scoring
            _log(f"worker {self.worker}: capture failed ({type(exc).__name__}: {exc})")
            mode = None
        collector.begin(mode is not None)
        return mode

    def _record(self, mode: str | None, request: Request, body: Any, payload: bytes, started: float,
                body_text: str | None = None) -> None:
        """Put a sampled request into the spool; a capture failure never fails the request.

        ``body_text`` is the inputs' JSON text when the request body is it (``/score``): it goes
        into the row as it came, as the answer's bytes do, so only the row's own fields and what
        score.py collected are encoded here (the cheapest row: benchmarks/capture.py)."""
        collected = collector.end()
        if mode is None:
            return
        try:
            fields: dict[str, Any] = {
                "request_id": request.request_id, "time": time.time(), "service": self.name,
                "model_version": self.config.model_version, "latency_ms": (time.monotonic() - started) * 1000,
            }
            raw: dict[str, str] = {}
            if mode in ("inputs", "both"):
                if body_text is not None:
                    raw["inputs"] = body_text
                else:
                    fields["inputs"] = body
            if collected:
                fields["collected"] = collected
            if mode in ("predictions", "both"):
                raw["prediction"] = payload.decode("utf-8")  # encode_result's JSON, so spliced as is
            self.spool.add(capture.row_text(fields, raw))
        except Exception as exc:  # noqa: BLE001 - capture is best effort next to scoring
            _log(f"worker {self.worker}: capture failed ({type(exc).__name__}: {exc})")

    def _call_run(self, inputs: dict[str, Any] | str) -> Any:
        """Call run(); RequestTimeout passes through, anything run() raises becomes a 500 HttpError."""
        try:
            if self.run_takes_raw:
                return self.run(inputs)  # type: ignore[misc]
            return self.run(**inputs)  # type: ignore[misc, arg-type]
        except (RequestTimeout, HttpError):
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code; its error goes to the caller and the log
            traceback.print_exc()
            sys.stderr.flush()
            self.row[F_ERR_RUN] += 1
            raise HttpError(500, "run_failed", f"run() raised {type(exc).__name__}: {exc}") from None

    def _score(self, request: Request) -> tuple[int, bytes, bytes, bytes, str]:
        started = time.monotonic()
        self._check_key(request)
        if not self.ready:
            raise HttpError(503, "not_ready", "the model is still loading (init() has not finished); retry shortly")
        if self.schema is None:
            body = parse_json_body(request.body, self.config.max_json_depth)
            raw = request.body.decode("utf-8")
            mode = self._sample()
            result = self._call_run(raw)
        else:
            body = parse_json_body(request.body, self.config.max_json_depth)
            try:
                inputs = build_inputs(self.schema, body)
            except SchemaError as exc:
                raise HttpError(400, "invalid_input", exc.message) from None
            mode = self._sample()
            result = self._call_run(inputs)
        try:
            payload = encode_result(result)
        except (TypeError, ValueError) as exc:
            self.row[F_ERR_RUN] += 1
            collector.end()
            raise HttpError(500, "bad_result", str(exc)) from None
        self._record(mode, request, body, payload, started,
                     capture.json_text(request.body) if mode in ("inputs", "both") else None)
        return 200, payload, JSON_TYPE, b"", "score"

    def _oip(self, request: Request) -> tuple[int, bytes, bytes, bytes, str]:
        path, method = request.path.rstrip("/"), request.method
        if path in ("/v2/health/live", "/v2/health/ready", "/v2"):
            if method not in ("GET", "HEAD"):
                raise HttpError(405, "method_not_allowed", f"use GET for {path}")
            if path == "/v2/health/live":
                return 200, b'{"live":true}', JSON_TYPE, b"", "health"
            if path == "/v2":
                body = json.dumps({"name": SERVER_NAME, "version": "1", "extensions": []}).encode()
                return 200, body, JSON_TYPE, b"", "metadata"
            return self._ready("ready", oip=True)
        if not path.startswith(self.model_prefix):
            raise HttpError(404, "not_found", f"nothing at {path}")
        rest = path[len(self.model_prefix):].split("/")
        name, rest = rest[0], rest[1:]
        if len(rest) >= 2 and rest[0] == "versions":
            rest = rest[2:]  # one model per service: any version names it
        if name != self.name:
            raise HttpError(404, "not_found", f"no model named {name!r}; this service serves {self.name!r}")
        action = rest[0] if rest else ""
        if len(rest) > 1 or action not in ("", "ready", "infer"):
            raise HttpError(404, "not_found", f"nothing at {path}")
        if action == "infer":
            if method != "POST":
                raise HttpError(405, "method_not_allowed", "infer with POST")
            self._check_key(request)
            if not self.ready:
                raise HttpError(503, "not_ready", "the model is still loading; retry shortly")
            started = time.monotonic()
            body = parse_json_body(request.body, self.config.max_json_depth)
            try:
                inputs, request_id = oip.parse_infer_request(self.schema, body)
            except SchemaError as exc:
                raise HttpError(400, "invalid_input", exc.message) from None
            if isinstance(request_id, str) and not capture.REQUEST_ID.fullmatch(request.headers.get("x-request-id") or "") \
                    and capture.REQUEST_ID.fullmatch(request_id):
                # An OIP client names its request in the body: that id is the one captured and
                # answered in X-Request-Id, so ground truth can be sent by it (a valid header wins).
                request.request_id = request_id
            mode = self._sample()
            result = self._call_run(inputs)
            try:
                payload = encode_result(result)
                value = json.loads(payload)
            except (TypeError, ValueError) as exc:
                self.row[F_ERR_RUN] += 1
                collector.end()
                raise HttpError(500, "bad_result", str(exc)) from None
            # Captured as a /score request of the same inputs would be, so both protocols' rows
            # have one column per schema input field (and the same prediction).
            plain = None
            if mode in ("inputs", "both"):
                try:
                    plain = oip.as_score_body(self.schema, body)
                except Exception as exc:  # noqa: BLE001 - capture is best effort next to scoring
                    _log(f"worker {self.worker}: capture of the inputs failed ({type(exc).__name__}: {exc})")
            self._record(mode, request, plain, payload, started)
            response = oip.infer_response(value, self.name, request_id, self.config.model_version)
            return 200, json.dumps(response).encode(), JSON_TYPE, b"", "infer"
        if method not in ("GET", "HEAD"):
            raise HttpError(405, "method_not_allowed", f"use GET for {path}")
        if action == "ready":
            return self._ready("ready", oip=True)
        document = oip.model_metadata(self.schema, self.name, self.config.model_version)
        return 200, json.dumps(document).encode(), JSON_TYPE, b"", "metadata"


# --------------------------------------------------------------------------------------------
# Worker: the event loop
# --------------------------------------------------------------------------------------------


class Conn:
    __slots__ = ("sock", "fd", "addr", "reader", "out", "last", "close_after", "want_write", "lingering")

    def __init__(self, sock: socket.socket, addr: str, max_body: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.reader = RequestReader(max_body)
        self.out = bytearray()
        self.last = time.monotonic()
        self.close_after = False
        self.want_write = False
        self.lingering = False

    @property
    def mid_request(self) -> bool:
        return self.reader.phase != IDLE


_LOG_UNSAFE = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")  # all but printable ASCII less the backslash


def escape_log_bytes(text: bytes) -> bytes:
    r"""Return ``text`` with control bytes (LF, CR, ESC...), backslashes and non-ASCII bytes as ``\xNN``.

    One access-log line then stays one line, and no request can send escape sequences (ANSI,
    OSC) to the terminal of whoever reads the log. Printable ASCII passes unchanged.
    """
    if _LOG_UNSAFE.search(text) is None:
        return text
    return _LOG_UNSAFE.sub(lambda match: b"\\x%02x" % match.group()[0], text)


LINGER_SECONDS = 2.0
LOG_FLUSH_BYTES = 16 * 1024
LOG_FLUSH_SECONDS = 0.1
# Idle this long with lines held, the worker writes them. Not at the first moment with no ready
# event: at one connection that moment comes after every response (the client has not sent the
# next request yet), and a write per request costs the container's log pipeline (runtime shim and
# engine, on the same cores) about 8-14 % of the throughput; the next request comes well within this.
LOG_IDLE_SECONDS = 0.002


class AccessLog:
    """Access-log lines gathered and written to ``fd`` together, off the response path.

    The worker writes them once it has had no ready event for ``LOG_IDLE_SECONDS`` (a quiet
    service logs each request within milliseconds) and, while it stays busy, at least every
    ``max_delay`` seconds or ``max_bytes`` bytes; ``flush()`` at shutdown writes the rest. A
    worker killed with SIGKILL loses what it held (at most ``max_delay`` worth).
    """

    __slots__ = ("fd", "buf", "due", "max_bytes", "max_delay")

    def __init__(self, fd: int = 1, max_bytes: int = LOG_FLUSH_BYTES, max_delay: float = LOG_FLUSH_SECONDS) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.due = 0.0
        self.max_bytes = max_bytes
        self.max_delay = max_delay

    def add(self, line: bytes, now: float) -> None:
        if not self.buf:
            self.due = now + self.max_delay
        self.buf += line

    def full_or_due(self, now: float) -> bool:
        return bool(self.buf) and (len(self.buf) >= self.max_bytes or now >= self.due)

    def flush(self) -> None:
        buf = self.buf
        while buf:
            try:
                written = os.write(self.fd, buf)
            except InterruptedError:
                continue
            except OSError:  # stdout gone: the log is lost, serving goes on
                buf.clear()
                return
            del buf[:written]


class Worker:
    def __init__(self, config: Config, listener: socket.socket, app: App) -> None:
        self.config = config
        self.listener = listener
        self.app = app
        self.conns: dict[int, Conn] = {}
        self.stopping = False
        self.master_pid = os.getppid()
        self.label = f"w{app.worker}".encode()
        self.timeout = config.timeout
        self.max_body = config.max_body
        self.deferring_since = 0.0
        self.log = AccessLog()

    # -- requests --------------------------------------------------------------------------

    def serve_request(self, conn: Conn, request: Request) -> None:
        app = self.app
        row = app.row
        started = time.monotonic()
        request.request_id = capture.request_id_from(request.headers.get("x-request-id"))
        scoring = request.method == "POST"
        if scoring:
            row[F_BUSY] = started
            if self.timeout:
                signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            status, body, content_type, extra, handler = app.handle(request)
        except Exception as exc:  # noqa: BLE001 - one request never ends the worker
            traceback.print_exc()
            sys.stderr.flush()
            status, content_type, extra = 500, JSON_TYPE, b""
            handler = "score" if request.path.endswith("/score") else "infer" if request.path.endswith("/infer") else "other"
            message = f"the server failed on this request ({type(exc).__name__}); the worker goes on"
            body = json.dumps({"error": message}).encode() if request.path.startswith("/v2") else error_body("internal_error", message)
        except RequestTimeout:
            status, content_type, extra = 504, JSON_TYPE, b""
            handler = "infer" if request.path.endswith("/infer") else "score"
            row[F_ERR_TIMEOUT] += 1
            message = f"run() took longer than the {self.timeout:g} s request timeout"
            body = json.dumps({"error": message}).encode() if request.path.startswith("/v2") else error_body("timeout", message)
            _log(f"worker {app.worker}: {request.method} {request.path} timed out after {self.timeout:g} s")
        finally:
            if scoring:
                if self.timeout:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                row[F_BUSY] = 0
        elapsed = time.monotonic() - started
        keep_alive = request.keep_alive and not self.stopping
        if keep_alive and len(self.conns) > 1 and len(self.conns) > app.stats.fewest_connections_elsewhere(app.worker, False) + 1:
            # Keep-alive connections stick to this worker; when it holds clearly more than
            # another, close this one after the response so the client reconnects there.
            keep_alive = False
        extra += b"X-Request-Id: %s\r\n" % request.request_id.encode()
        conn.out += response_bytes(status, body, content_type, keep_alive, extra, request.method == "HEAD")
        if not keep_alive:
            conn.close_after = True
        row.count(handler, status, elapsed if handler in ("score", "infer") else None)
        if self.config.access_log:
            self.log.add(b'%s %s "%s %s" %d %d %.2fms\n' % (
                self.label, escape_log_bytes(conn.addr.encode()), escape_log_bytes(request.method.encode("latin-1")),
                escape_log_bytes(request.target[:200].encode("latin-1", "replace")), status, len(body), elapsed * 1000,
            ), started + elapsed)

    def serve_error(self, conn: Conn, exc: HttpError) -> None:
        extra = b"X-Request-Id: %s\r\n" % capture.request_id_from(None).encode()
        conn.out += response_bytes(exc.status, error_body(exc.code, exc.message), JSON_TYPE, not exc.close, extra)
        if exc.close:
            conn.close_after = True
        path = conn.reader.path_hint
        handler = "score" if path.endswith("/score") else "infer" if path.endswith("/infer") else "other"
        self.app.row.count(handler, exc.status, None)
        if self.config.access_log:
            now = time.monotonic()
            self.log.add(b'%s %s "-" %d refused: %s\n' % (
                self.label, escape_log_bytes(conn.addr.encode()), exc.status,
                escape_log_bytes(exc.message[:200].encode("utf-8", "replace"))), now)

    # -- sockets ---------------------------------------------------------------------------

    def loop(self) -> None:
        try:
            self._loop()
        finally:
            self.log.flush()

    def _loop(self) -> None:
        epoll = select.epoll()
        self.epoll = epoll
        listen_fd = self.listener.fileno()
        # Not EPOLLEXCLUSIVE: every idle worker must see a new connection for accept() to balance.
        epoll.register(listen_fd, select.EPOLLIN)
        epoll.register(self.wake_r, select.EPOLLIN)
        conns = self.conns
        log = self.log
        listening = True
        next_sweep = time.monotonic() + 1.0
        while True:
            if self.stopping and listening:
                epoll.unregister(listen_fd)
                listening = False
                for conn in list(conns.values()):
                    if not conn.out and not conn.mid_request:
                        self.close(conn)
            if self.stopping and not conns:
                break
            try:
                # With log lines waiting, wait briefly: no ready event by then means idle, time to write them.
                events = epoll.poll(LOG_IDLE_SECONDS if log.buf else 1.0)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            for fd, mask in events:
                if fd == listen_fd:
                    self.accept()
                elif fd == self.wake_r:
                    try:
                        os.read(self.wake_r, 512)
                    except BlockingIOError:
                        pass
                else:
                    conn = conns.get(fd)
                    if conn is None:
                        continue
                    if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                        self.on_readable(conn)
                    if mask & select.EPOLLOUT and fd in conns:
                        self.flush(conn)
            now = time.monotonic()
            if log.buf and (not events or log.full_or_due(now)):
                log.flush()
            if now >= next_sweep:
                next_sweep = now + 1.0
                for conn in [c for c in conns.values()
                             if now - c.last > (LINGER_SECONDS if c.lingering else KEEPALIVE_TIMEOUT)]:
                    self.close(conn)
                for conn in [c for c in conns.values() if not c.close_after and c.mid_request]:
                    self.check_deadlines(conn, now)
                if os.getppid() != self.master_pid:  # the master is gone: do not linger as an orphan
                    self.stopping = True
                if self.stopping:
                    for conn in [c for c in conns.values() if not c.out]:
                        self.close(conn)
        epoll.close()

    def accept(self) -> None:
        """Take new connections, leaving them to a less loaded idle worker when there is one.

        Keep-alive connections stay with the worker that accepted them, so a burst of connects
        must not all land on whichever worker woke first: every idle worker is woken, and one
        with more connections than another idle worker lets that one take the connection (for
        a few milliseconds at most, in case the other does not).
        """
        stats, me, row = self.app.stats, self.app.worker, self.app.row
        for _ in range(16):
            if len(self.conns) > stats.fewest_connections_elsewhere(me):
                now = time.monotonic()
                if not self.deferring_since:
                    self.deferring_since = now
                if now - self.deferring_since < 0.005:
                    os.sched_yield()  # let the idle worker run: on few cores it may be waiting for ours
                    return
            self.deferring_since = 0.0
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving what we have
                _log(f"worker {me}: accept failed: {exc}")
                return
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            peer = addr[0] if isinstance(addr, tuple) else "unix"
            conn = Conn(sock, peer, self.max_body)
            self.conns[conn.fd] = conn
            row[F_CONNS] = len(self.conns)
            self.epoll.register(conn.fd, select.EPOLLIN | select.EPOLLRDHUP)

    def on_readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        if not data:
            self.close(conn)
            return
        conn.last = time.monotonic()
        if conn.close_after:
            return  # a response that closes the connection is queued; ignore what follows
        reader = conn.reader
        try:
            error = reader.feed(data)
            ready = reader.ready
            while ready and not conn.close_after:
                self.serve_request(conn, ready.pop(0))
            if error is not None and not conn.close_after:
                self.serve_error(conn, error)
            elif reader.continue_wanted and not conn.close_after:
                reader.continue_wanted = False
                conn.out += b"HTTP/1.1 100 Continue\r\n\r\n"
        except Exception as exc:  # noqa: BLE001 - whatever one connection sends, the worker goes on
            traceback.print_exc()
            sys.stderr.flush()
            reader.ready.clear()
            if not conn.close_after:
                self.serve_error(conn, HttpError(500, "internal_error", f"the server failed on this request ({type(exc).__name__})", close=True))
        if conn.out:
            self.flush(conn)

    def check_deadlines(self, conn: Conn, now: float) -> None:
        """Answer 408 and close when a request's head (or body) is taking longer than allowed."""
        reader = conn.reader
        if reader.head_started and now - reader.head_started > self.config.head_timeout:
            what = f"the request head did not arrive within {self.config.head_timeout:g} s"
        elif reader.body_started and now - reader.body_started > self.config.body_timeout:
            what = f"the request body did not arrive within {self.config.body_timeout:g} s"
        else:
            return
        self.serve_error(conn, HttpError(408, "request_timeout", what, close=True))
        self.flush(conn)

    def flush(self, conn: Conn) -> None:
        try:
            while conn.out:
                sent = conn.sock.send(conn.out)
                del conn.out[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close(conn)
            return
        conn.last = time.monotonic()
        if conn.out:
            if not conn.want_write:
                conn.want_write = True
                self.epoll.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP)
            return
        if conn.want_write:
            conn.want_write = False
            self.epoll.modify(conn.fd, select.EPOLLIN | select.EPOLLRDHUP)
        if conn.close_after and not conn.lingering:
            # Closing with unread bytes (say, the rest of a body refused with 413) makes the
            # kernel send a reset that can destroy our response before the client reads it:
            # stop writing and read-and-drop until the client closes, for a short while.
            conn.lingering = True
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close(conn)
        elif self.stopping and not conn.mid_request and not conn.close_after:
            self.close(conn)

    def close(self, conn: Conn) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        self.app.row[F_CONNS] = len(self.conns)
        try:
            self.epoll.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        try:
            conn.sock.close()
        except OSError:
            pass


def _answer_while_loading(sock: socket.socket, app: App, max_body: int) -> None:
    """Read one request from ``sock`` (5 s at most) and answer it, closing the connection after."""
    deadline = time.monotonic() + 5.0
    reader = RequestReader(max_body)
    error = None
    while not reader.ready and error is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            error = HttpError(408, "request_timeout", "the request did not arrive within 5 s", close=True)
            break
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return
        error = reader.feed(chunk)
    if reader.ready:
        request = reader.ready[0]
        if request.path in ("/health", "/v2/health/live", "/ready", "/v2/health/ready", "/metrics"):
            status, body, content_type, extra, handler = app.handle(request)
        else:
            status, body, content_type, extra = 503, error_body("not_ready", "the model is still loading (init() has not finished); retry shortly"), JSON_TYPE, b"Retry-After: 1\r\n"
            handler = "score" if request.path.endswith("/score") else "infer" if request.path.endswith("/infer") else "other"
    else:
        status, body, content_type, extra, handler = error.status, error_body(error.code, error.message), JSON_TYPE, b"", "other"
    sock.sendall(response_bytes(status, body, content_type, False, extra))
    app.row.count(handler, status, None)


def _serve_while_loading(listener: socket.socket, app: App, stats: Stats, done: threading.Event, max_body: int) -> None:
    """Answer probes while init() runs, so /health says alive and /ready says 503 during a cold start.

    It takes connections only while no worker is ready: after a respawn the ready workers keep
    the traffic and scoring requests never meet this placeholder.
    """
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    try:
        while not done.is_set():
            if stats.any_ready():
                done.wait(0.1)
                continue
            if not epoll.poll(0.1) or done.is_set():
                continue
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            with sock:
                try:
                    _answer_while_loading(sock, app, max_body)
                except (OSError, HttpError):
                    continue
                except Exception:  # noqa: BLE001 - a hostile probe never stops the cold start
                    traceback.print_exc()
                    continue
    finally:
        epoll.close()


def _worker_main(index: int, config: Config, listener: socket.socket, stats: Stats, schema: Any, openapi: bytes) -> int:
    """Run one worker: import score.py, init() once, then serve. Returns the exit code."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master turns Ctrl+C into a SIGTERM for us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # during init: just die
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    row = stats.row(index)
    row[F_PID] = os.getpid()
    row[F_READY] = 0
    row[F_BUSY] = 0
    row[F_CONNS] = 0
    try:
        sys.stdout.reconfigure(line_buffering=True)  # prints in run() reach the container log promptly
    except AttributeError:
        pass
    os.chdir(config.app_dir)
    if config.app_dir not in sys.path:
        sys.path.insert(0, config.app_dir)

    app = App(config, schema, openapi, stats, index)
    loading = threading.Event()
    helper = threading.Thread(target=_serve_while_loading, args=(listener, app, stats, loading, config.max_body), daemon=True)
    helper.start()
    try:
        app.load_module()
    except BaseException:  # noqa: BLE001 - report whatever init() raised, then stop the service
        traceback.print_exc()
        _log(f"worker {index}: loading {config.score_file} / init() failed; the service cannot start")
        loading.set()
        return EXIT_INIT_FAILED
    loading.set()
    helper.join()
    # Objects made by init() (the model) live as long as the worker: keep the collector off them.
    gc.collect()
    gc.freeze()

    worker = Worker(config, listener, app)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    worker.wake_r = wake_r
    signal.set_wakeup_fd(wake_w)

    def on_term(signum: int, frame: Any) -> None:
        worker.stopping = True

    def on_alarm(signum: int, frame: Any) -> None:
        raise RequestTimeout()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    app.ready = True
    row[F_READY] = 1
    try:
        worker.loop()
    finally:
        row[F_READY] = 0
    return 0


# --------------------------------------------------------------------------------------------
# Master
# --------------------------------------------------------------------------------------------


class Master:
    def __init__(self, config: Config, listener: socket.socket, schema: Any, openapi: bytes) -> None:
        self.config = config
        self.listener = listener
        self.schema = schema
        self.openapi = openapi
        self.stats = Stats(config.workers)
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.respawn_at: dict[int, float] = {}
        self.deaths: dict[int, list[float]] = {}
        self.stopping = False
        self.drain_until: float | None = None  # serving on after a SIGTERM until then (stop_drain)
        self.drain_logged = False
        self.exit_code = 0

    def spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _worker_main(index, self.config, self.listener, self.stats, self.schema, self.openapi)
            except BaseException:  # noqa: BLE001 - never let a child return into the master's code
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        self.pids[pid] = index

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)

        def on_stop(signum: int, frame: Any) -> None:
            if signum == signal.SIGTERM and self.config.stop_drain and self.drain_until is None:
                self.drain_until = time.monotonic() + self.config.stop_drain
                return
            self.stopping = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        for index in range(self.config.workers):
            self.spawn(index)
        while not self.stopping:
            select.select([wake_r], [], [], 0.5)
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
            self.reap()
            self.kill_stuck()
            now = time.monotonic()
            if self.drain_until is not None and not self.stopping:
                if now >= self.drain_until:
                    self.stopping = True
                    break
                if not self.drain_logged:
                    self.drain_logged = True
                    _log(f"stopping in {self.config.stop_drain:g} s (serving until then, as MLPORTAL_STOP_DRAIN_SECONDS asks)")
            for index, when in list(self.respawn_at.items()):
                if now >= when and not self.stopping:
                    del self.respawn_at[index]
                    self.stats.row(index)[F_RESTARTS] += 1
                    self.spawn(index)
        self.shutdown()
        return self.exit_code

    def reap(self) -> None:
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            row = self.stats.row(index)
            row[F_READY] = 0
            row[F_BUSY] = 0
            row[F_CONNS] = 0
            if self.stopping:
                continue
            if code == EXIT_INIT_FAILED:
                _log("stopping: score.py could not be loaded (see the traceback above)")
                self.exit_code = EXIT_INIT_FAILED
                self.stopping = True
                continue
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            now = time.monotonic()
            recent = [t for t in self.deaths.get(index, []) if now - t < 30] + [now]
            self.deaths[index] = recent
            delay = 0.0 if len(recent) <= 3 else min(10.0, 0.5 * 2 ** (len(recent) - 3))
            _log(f"worker {index} (pid {pid}) {how}; starting it again" + (f" in {delay:g} s" if delay else ""))
            self.respawn_at[index] = now + delay

    def kill_stuck(self) -> None:
        timeout = self.config.timeout
        if not timeout:
            return
        now = time.monotonic()
        for pid, index in list(self.pids.items()):
            row = self.stats.row(index)
            busy = row[F_BUSY]
            if busy and now - busy > timeout + KILL_GRACE:
                _log(f"worker {index} (pid {pid}) is stuck in a request for {now - busy:.1f} s (timeout {timeout:g} s); killing it")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                row[F_BUSY] = 0
                row[F_KILLED] += 1
                row[F_ERR_TIMEOUT] += 1
                row.count("score", 504, now - busy)

    def shutdown(self) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + max(10.0, (self.config.timeout or 0) + 1)
        while self.pids and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.pids.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in list(self.pids):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.listener.close()
        _log("stopped")


def make_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    # Every worker polls this one socket; non-blocking so a worker that loses the race for a
    # connection gets EAGAIN instead of hanging in accept().
    sock.setblocking(False)
    return sock


# --------------------------------------------------------------------------------------------
# Before the fork: what the workers would otherwise each load at once
# --------------------------------------------------------------------------------------------

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
SCAN_MAX_FILES = 64
SCAN_MAX_ENTRIES = 20_000  # files and folders looked at in the app dir


def _is_app_module(module: str, app_dir: str) -> bool:
    """Return True when the module's top-level package is one of the app's own files (or cannot be found).

    Those run the app's code on import (score.py itself, often): they stay the workers' to import.
    """
    top = module.split(".", 1)[0]
    if top == "__main__":
        return True
    # The master's sys.path may not hold the app dir (workers import score.py from it): an app
    # file that shares its name with an installed package must not be shadowed by that package.
    if os.path.exists(os.path.join(app_dir, top + ".py")) or os.path.isdir(os.path.join(app_dir, top)):
        return True
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return True
    if spec is None:
        return True
    places = list(spec.submodule_search_locations or []) + ([spec.origin] if spec.origin and spec.has_location else [])
    inside = app_dir.rstrip(os.sep) + os.sep
    return any(os.path.abspath(place).startswith(inside) for place in places)


def preimport_model_modules(app_dir: str) -> list[str]:
    """Import the modules the app's pickle files name; return those imported. Never unpickles.

    The workers unpickle the model in init(); with its modules already loaded in the master they
    share those pages and skip the import. Import errors are ignored: init() meets them itself.
    """
    paths = []
    seen = 0
    for folder, dirs, files in os.walk(app_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(PICKLE_SUFFIXES)]
        seen += len(dirs) + len(files)
        if len(paths) >= SCAN_MAX_FILES or seen >= SCAN_MAX_ENTRIES:
            break
    names: list[str] = []
    budget = SCAN_MAX_OPCODES
    for path in paths[:SCAN_MAX_FILES]:
        if budget <= 0:
            break
        scan = scan_pickle(path, max_opcodes=budget)
        budget -= scan.opcodes
        names += [n for n in scan.modules if n not in names]
    imported = []
    for name in names:
        if name in sys.modules or not all(part.isidentifier() for part in name.split(".")):
            continue
        if _is_app_module(name, app_dir):
            continue
        try:
            importlib.import_module(name)
        except (Exception, SystemExit):  # noqa: BLE001 - the worker's init() reports a real problem
            continue
        imported.append(name)
    return imported


def load_app_schema(config: Config) -> Any:
    """Return the app's Schema, or None when it has no schema file (run() then gets the raw body)."""
    path = os.path.join(config.app_dir, config.schema_file)
    if not os.path.exists(path):
        _log(f"no {config.schema_file} in {config.app_dir}: run() will get the raw JSON text of each request")
        return None
    try:
        with open(path, "rb") as handle:
            return load_schema(handle.read())
    except SchemaError as exc:
        raise SystemExit(f"mlportal: {path}: {exc.message}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlportal_runtime.server", description="Serve score.py over HTTP.")
    parser.add_argument("--app-dir", default=".", help="folder with score.py, service_schema.json and the model files")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default MLPORTAL_WORKERS or the CPUs, capped by the CPU quota)")
    parser.add_argument("--score-file", default=SCORE_FILE)
    parser.add_argument("--schema-file", default=SCHEMA_FILE)
    config = Config(parser.parse_args(argv))
    if not os.path.isfile(os.path.join(config.app_dir, config.score_file)):
        raise SystemExit(f"mlportal: no {config.score_file} in {config.app_dir}")

    schema = load_app_schema(config)
    if schema is not None and schema.needs_numpy:
        # Import once in the master: the workers then share these pages and start faster.
        import numpy  # noqa: F401
        if schema.needs_pandas:
            import pandas  # noqa: F401
    if config.preimport:
        started = time.monotonic()
        imported = preimport_model_modules(config.app_dir)
        if imported:
            _log(f"imported {len(imported)} module(s) named by the model files in {(time.monotonic() - started) * 1000:.0f} ms")
    if schema is not None:
        # The converters prepare themselves on first use (dtypes, pandas' lazy imports): do that
        # here once, not in every worker's first request.
        try:
            build_inputs(schema, example_body(schema))
        except Exception:  # noqa: BLE001 - an example that does not fit is the first request's to report
            pass
        document = openapi_document(schema, config.service_name, auth=bool(config.keys))
    else:
        document = {"openapi": "3.0.3", "info": {"title": f"{config.service_name} scoring service", "version": "1"},
                    "paths": {"/score": {"post": {"requestBody": {"content": {"application/json": {"schema": {}}}},
                                                  "responses": {"200": {"description": "What run() returned."}}}}}}
    openapi = json.dumps(document).encode()

    try:
        capture.Spool().create(capture.env_settings())
    except (OSError, sqlite3.Error) as exc:
        config.capture = False
        _log(f"data capture is off: the spool cannot be made ({exc})")
    listener = make_listener(config.host, config.port)
    port = listener.getsockname()[1]
    _log(f"serving {config.service_name!r} from {config.app_dir} on http://{config.host}:{port} with {config.workers} worker(s)"
         + (", keys required" if config.keys else "") + (f", timeout {config.timeout:g} s" if config.timeout else ""))
    # Everything made so far lives as long as the server: freeze it out of the collector's
    # reach, so no worker's collection walks (and copies, by touching refcounts) these pages.
    gc.collect()
    gc.freeze()
    return Master(config, listener, schema, openapi).run()


if __name__ == "__main__":
    sys.exit(main())
