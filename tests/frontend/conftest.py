"""Fixtures for the front-end tests: a browser page that records every Content-Security-Policy
violation (the `securitypolicyviolation` event, the console's "Refused to …" errors, uncaught page
errors), the reports the portal's /csp-report/ endpoint logged, and real runs made by the worker.
The lab's files and the one-shot service create come from the deployments tests' fixtures."""
from __future__ import annotations

import logging

import pytest

from tests.deployments.conftest import churn, create_realtime, wait_for  # noqa: F401 (shared fixtures)
from tests.e2e.conftest import docker_worker  # noqa: F401 (shared fixture)
from tests.helpers import wait_until
from tests.runtime.conftest import trained_churn  # noqa: F401 (shared session fixture)

# Installed in every document before its own scripts run; Playwright's binding is not subject to
# the page's CSP, so a violation is reported even when the page can run no script of its own.
WATCH_CSP = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__mlportalCsp({document: e.documentURI, directive: e.effectiveDirective, blocked: e.blockedURI,
                       source: e.sourceFile, line: e.lineNumber, sample: e.sample});
});
"""


class PageProblems:
    """What went wrong in the pages of one browser context: CSP violations, console errors, page errors."""

    def __init__(self) -> None:
        self.violations: list[dict] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []

    def watch(self, page) -> None:
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(f"{page.url}: {m.text}"))
        page.on("pageerror", lambda e: self.page_errors.append(f"{page.url}: {e}"))
        # The console's "Failed to load resource" line does not say which; this does.
        page.on("response", lambda r: r.status >= 400 and self.console_errors.append(f"{r.status} {r.url}"))

    def assert_none(self) -> None:
        assert self.violations == [], f"CSP violations: {self.violations}"
        assert self.page_errors == [], f"uncaught errors in pages: {self.page_errors}"
        assert self.console_errors == [], f"console errors: {self.console_errors}"


@pytest.fixture
def watched_page(browser, live_server, client):
    """watched_page(user=None, **context_options) -> (page, problems): a Chromium page (logged in as
    `user` if given) whose CSP violations, console errors and page errors land in `problems`."""
    from django.conf import settings as django_settings

    contexts = []

    def open_page(user=None, **options):
        options.setdefault("viewport", {"width": 1300, "height": 900})
        context = browser.new_context(**options)
        context.set_default_timeout(30_000)
        contexts.append(context)
        problems = PageProblems()
        context.expose_binding("__mlportalCsp", lambda source, report: problems.violations.append(report))
        context.add_init_script(WATCH_CSP)
        if user is not None:
            client.force_login(user)
            context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME,
                                  "value": client.cookies[django_settings.SESSION_COOKIE_NAME].value,
                                  "url": live_server.url}])
        page = context.new_page()
        problems.watch(page)
        return page, problems

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def csp_reports(caplog):
    """The violation reports /csp-report/ logged during the test (the live server runs in this process)."""
    caplog.set_level(logging.WARNING, logger="mlportal.csp")

    class Reports:
        def __call__(self) -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "mlportal.csp"]

    return Reports()


@pytest.fixture
def real_run(docker_worker):  # noqa: F811
    """real_run(project, user, script) -> the Run after the real worker ran `script` in Docker."""
    from runs import services
    from runs.models import Run

    def run(project, user, script: str, *, timeout: float = 600) -> Run:
        submitted = services.run_submit(project=project, script=script, args=[], target="docker", user=user)

        def ended():
            row = Run.objects.get(pk=submitted.pk)
            return row if row.status not in ("queued", "preparing", "running") else None

        row = wait_until(ended, timeout=timeout, interval=0.3, message=f"run of {script} to end")
        assert row.status == "completed", f"{row.status}: {row.status_reason}"
        return row

    return run
