"""The Content-Security-Policy's two ends that are this project's own: the endpoint browsers send
violation reports to, and the Swagger UI page served under the same strict policy.

The policy itself is the `CONTENT_SECURITY_POLICY` setting (django-csp's `CSPMiddleware` writes the
header on every response): no inline script, no inline style, nothing from another origin. A page
that needs an inline script is a bug to fix in its template, not an exception to add here.
"""
from __future__ import annotations

import json
import logging
import threading
import time

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularSwaggerSplitView

from core.errors import error_body

logger = logging.getLogger("mlportal.csp")

# A report is a few hundred bytes; a browser sends one per violation. Anything much bigger is not
# a report, and a hostile client must not get to fill the log with it.
MAX_REPORT_BYTES = 64 * 1024
MAX_REPORTS_PER_REQUEST = 20
MAX_FIELD_CHARS = 300
# Log lines per minute and process: a page in a loop (or a client posting forged reports) must not
# fill the disk. Beyond it reports are counted, and the count is logged once the minute is over.
MAX_LOGGED_PER_MINUTE = 60

# The fields worth a log line, under their report-uri (CSP2) and Reporting API (CSP3) names.
FIELDS = (
    ("document", ("document-uri", "documentURL")),
    ("directive", ("effective-directive", "effectiveDirective", "violated-directive")),
    ("blocked", ("blocked-uri", "blockedURL")),
    ("source", ("source-file", "sourceFile")),
    ("line", ("line-number", "lineNumber")),
    ("sample", ("script-sample", "sample")),
    ("disposition", ("disposition",)),
)


class _LogBudget:
    """How many report lines may still be logged in the current minute (thread-safe)."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.lock = threading.Lock()
        self.window = 0
        self.used = 0
        self.dropped = 0

    def take(self) -> tuple[bool, int]:
        """(may log one more line, reports dropped in the window that just ended)."""
        with self.lock:
            window = int(self.clock() // 60)
            ended_dropped = 0
            if window != self.window:
                ended_dropped, self.window, self.used, self.dropped = self.dropped, window, 0, 0
            if self.used < self.per_minute:
                self.used += 1
                return True, ended_dropped
            self.dropped += 1
            return False, ended_dropped


log_budget = _LogBudget(MAX_LOGGED_PER_MINUTE)


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(error_body(message, code), status=status)


def _clean(value) -> str:
    """A report field as one short line (reports are attacker-controlled text headed for the log)."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:MAX_FIELD_CHARS]


def parse_reports(body: bytes) -> list[dict[str, str]]:
    """Returns the violations in a report body: `{"csp-report": {...}}` (report-uri) or a list of
    `{"type": "csp-violation", "body": {...}}` (report-to); raises ValueError on anything else."""
    data = json.loads(body.decode("utf-8"))
    if isinstance(data, dict) and isinstance(data.get("csp-report"), dict):
        raw = [data["csp-report"]]
    elif isinstance(data, list):
        if not all(isinstance(item, dict) for item in data):
            raise ValueError("a Reporting API batch is a list of report objects")
        # A batch may hold other kinds of report (deprecation, intervention): those are not ours.
        raw = [item.get("body") for item in data[:MAX_REPORTS_PER_REQUEST] if item.get("type") == "csp-violation"]
        if not all(isinstance(item, dict) for item in raw):
            raise ValueError("a csp-violation report without a body object")
    else:
        raise ValueError('expected {"csp-report": {...}} or a list of csp-violation reports')
    reports = []
    for item in raw:
        report = {}
        for key, names in FIELDS:
            value = next((item[n] for n in names if item.get(n) not in (None, "")), None)
            if value is not None:
                report[key] = _clean(value)
        reports.append(report)
    return reports


@csrf_exempt  # browsers send reports on their own, without the page's CSRF token or cookies
def csp_report(request: HttpRequest) -> HttpResponse:
    """POST /csp-report/: logs each Content-Security-Policy violation a browser reports (logger
    `mlportal.csp`, level WARNING; at most MAX_LOGGED_PER_MINUTE lines a minute, then a count) and
    answers 204; a body that is not a report answers 400, one over MAX_REPORT_BYTES 413."""
    if request.method != "POST":
        return _error(405, "method_not_allowed", "Send CSP violation reports with POST.")
    length = request.headers.get("Content-Length") or "0"
    if not length.isdigit() or int(length) > MAX_REPORT_BYTES:
        return _error(413, "too_large", f"A CSP report is at most {MAX_REPORT_BYTES} bytes.")
    if len(request.body) > MAX_REPORT_BYTES:  # a chunked body names no length up front
        return _error(413, "too_large", f"A CSP report is at most {MAX_REPORT_BYTES} bytes.")
    try:
        reports = parse_reports(request.body)
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        return _error(400, "invalid_report", f"Not a CSP violation report: {exc}")
    for report in reports:
        allowed, dropped = log_budget.take()
        if dropped:
            logger.warning("CSP violation: %d more reports in the last minute were not logged", dropped)
        if allowed:
            logger.warning("CSP violation: %s", " ".join(f"{k}={v}" for k, v in report.items()),
                           extra={"csp_report": report})
    return HttpResponse(status=204)


class ApiDocsView(SpectacularSwaggerSplitView):
    """Swagger UI with its start-up script served as a file of its own (`?script`) and its page
    styles in static/css/swagger.css, so the docs run under the same policy as every other page."""

    template_name = "api_docs.html"
