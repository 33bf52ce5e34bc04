"""The real parts the suite drives (a Docker engine, Chromium through Playwright, Redis): locally a
test whose part is missing is skipped; with ``MLPORTAL_REQUIRE_REAL_PARTS=1`` (``.ci/run`` sets it)
that skip is reported as a failure, so a CI machine without them can never read green.

Skips go through ``missing_part(part, why)``; the ``pytest_runtest_makereport`` hook (imported by
``tests/conftest.py``) also catches a plain ``pytest.skip("no Docker engine: …")`` and a failed
``importorskip`` of Playwright.
"""
from __future__ import annotations

import os
import re

import pytest

FLAG = "MLPORTAL_REQUIRE_REAL_PARTS"
PARTS = ("Docker engine", "Chromium", "Redis", "nginx", "tmpfs", "wrk")
_MISSING = re.compile(r"\bno (%s)\b|could not import 'playwright" % "|".join(re.escape(p) for p in PARTS))


def required() -> bool:
    return os.environ.get(FLAG, "") not in ("", "0")


def missing_part(part: str, why: str) -> None:
    """Skips the test (or fixture) for a missing real part; a failure under the flag (see the hook)."""
    pytest.skip(f"no {part}: {why}")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr or "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or not required() or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if _MISSING.search(reason):
        report.outcome = "failed"
        report.longrepr = (f"{reason}\n{FLAG}=1: a missing real part (Docker engine, Chromium, Redis, nginx, a tmpfs mount) is a failure, "
                           "not a skip: start it (scripts/start_services.sh, scripts/install_system_packages.sh).")
