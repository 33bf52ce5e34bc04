"""/healthz: database, broker, worker and Docker engine, each up or down with the reason."""
from __future__ import annotations

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


def healthz(request):
    """HTML for people, JSON for machines (`?format=json` or an Accept header); 503 when a part is down."""
    report = run_checks()
    code = 200 if report["ok"] else 503
    wants_json = request.GET.get("format") == "json" or "application/json" in request.headers.get("Accept", "")
    if wants_json or request.path.startswith("/api/"):
        return JsonResponse(report, status=code)
    return render(request, "healthz.html", {"report": report}, status=code)
