"""/healthz: database, broker, worker and Docker engine, each up or down with the reason.

A real check takes seconds (a worker ping waits 1.5 s), so requests never run one: they read the
last report, and a stale one (older than MLPORTAL_HEALTH_MAX_AGE seconds) is refreshed by one
background thread per process while the request answers from what it has. Only the very first
request of a process waits, and every request arriving meanwhile waits on that same check.
The public answer says only ``ok`` or ``degraded``; which part is down, and why (host names,
versions, backends), is for staff.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render


def check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True, "detail": connection.vendor}
    except Exception as exc:  # any driver error means "down"; the reason is what matters
        return {"ok": False, "detail": f"database unreachable: {exc}"}


def check_broker(url: str | None = None) -> dict:
    from mlportal.celery import app

    url = url or settings.CELERY_BROKER_URL
    try:
        with app.connection_for_write(url) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            transport = conn.transport_cls if isinstance(conn.transport_cls, str) else conn.transport.driver_type
        return {"ok": True, "detail": str(transport)}
    except Exception as exc:
        return {"ok": False, "detail": f"broker unreachable at {_redact(url)}: {exc}"}


def check_worker() -> dict:
    from mlportal.celery import app

    try:
        replies = app.control.ping(timeout=1.5) or []
    except Exception as exc:
        return {"ok": False, "detail": f"could not ask workers: {exc}"}
    if not replies:
        return {"ok": False, "detail": "no Celery worker answered a ping within 1.5 s: start one (make run starts it)"}
    return {"ok": True, "detail": ", ".join(sorted(name for reply in replies for name in reply))}


def check_docker() -> dict:
    try:
        from compute.engine import engine_status
    except ImportError as exc:
        return {"ok": False, "detail": f"compute package unavailable: {exc}"}
    status = engine_status(settings.MLPORTAL_DOCKER_URL)
    if status["ok"]:
        return {"ok": True, "detail": f"Docker {status['version']}"}
    return {"ok": False, "detail": status["error"]}


CHECKS = {"database": check_database, "broker": check_broker, "worker": check_worker, "docker": check_docker}


def _redact(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def run_checks() -> dict:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(CHECKS)) as pool:
        futures = {name: pool.submit(_run_one, fn) for name, fn in CHECKS.items()}
        parts = {name: future.result() for name, future in futures.items()}
    return {"ok": all(p["ok"] for p in parts.values()), "parts": parts, "took_ms": round((time.monotonic() - started) * 1000)}


def _run_one(fn) -> dict:
    try:
        return fn()
    finally:
        connection.close()  # each check thread opened its own connection


class _Cache:
    """The last report of this process and the one refresh that may be running."""

    lock = threading.Lock()
    report: dict | None = None
    checked: float = 0.0  # time.monotonic() of the last finished check
    refreshing = False
    first = threading.Event()


def _refresh() -> None:
    try:
        report = run_checks()
    except Exception as exc:  # noqa: BLE001 - a check that blows up is a degraded portal, not a dead thread
        report = {"ok": False, "parts": {"portal": {"ok": False, "detail": f"health check failed: {exc}"}}, "took_ms": 0}
    report["checked_at"] = time.time()
    with _Cache.lock:
        _Cache.report, _Cache.checked, _Cache.refreshing = report, time.monotonic(), False
    _Cache.first.set()


def cached_report(*, wait_s: float = 10.0) -> dict:
    """Returns the last health report, starting a background refresh when it is older than
    MLPORTAL_HEALTH_MAX_AGE (at most one at a time). Waits (up to ``wait_s``) only while no report
    exists yet; a check that has not answered by then is reported degraded."""
    with _Cache.lock:
        stale = _Cache.report is None or time.monotonic() - _Cache.checked >= settings.MLPORTAL_HEALTH_MAX_AGE
        start = stale and not _Cache.refreshing
        if start:
            _Cache.refreshing = True
    if start:
        threading.Thread(target=_refresh, daemon=True, name="healthz-refresh").start()
    if _Cache.report is None:
        _Cache.first.wait(timeout=wait_s)
    report = _Cache.report
    if report is None:
        return {"ok": False, "parts": {}, "took_ms": None, "checked_at": None}
    return report


def reset_cache() -> None:
    """Forgets the last report (tests that change what a check sees)."""
    with _Cache.lock:
        _Cache.report, _Cache.checked = None, 0.0
        _Cache.first = threading.Event()


def _audience(request) -> str:
    """"staff" sees every detail, "member" (any signed-in user) each part's up/down without details
    (the CLI's `provider list` needs the engine's), "public" only ok or degraded."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        from rest_framework.request import Request

        from workspaces.auth import BearerTokenAuthentication

        try:  # plain Django view: the API's bearer token is read here by hand
            found = BearerTokenAuthentication().authenticate(Request(request))
        except Exception:  # noqa: BLE001 - a bad token is simply not signed in, for a health probe
            found = None
        user = found[0] if found else None
    if user is None or not user.is_authenticated:
        return "public"
    return "staff" if user.is_staff else "member"


def _view_of(report: dict, audience: str) -> dict:
    status = "ok" if report["ok"] else "degraded"
    if audience == "public":
        return {"status": status}
    age = None if report.get("checked_at") is None else round(max(0.0, time.time() - report["checked_at"]), 1)
    if audience == "member":
        return {"status": status, "ok": report["ok"], "age_s": age,
                "parts": {name: {"ok": part["ok"]} for name, part in report["parts"].items()}}
    return {"status": status, **report, "age_s": age}


def healthz(request):
    """HTML for people, JSON for machines (`?format=json`, an Accept header, or under /api/); 503
    when a part is down. Answers from the cached report (see the module's docstring)."""
    report = cached_report()
    audience = _audience(request)
    body = _view_of(report, audience)
    code = 200 if report["ok"] else 503
    wants_json = request.GET.get("format") == "json" or "application/json" in request.headers.get("Accept", "")
    if wants_json or request.path.startswith("/api/"):
        return JsonResponse(body, status=code)
    return render(request, "healthz.html", {"report": body, "audience": audience}, status=code)
