"""MLPORTAL_REQUIRE_REAL_PARTS=1 (set by .ci/run) turns a skip for a missing Docker engine, Chromium
or Redis into a failure; without it such a skip stays a skip, and other skips are never touched.
Each case is a real pytest run in a subprocess on a tiny test file using the suite's hook."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TESTS = '''
import pytest

from tests.real_parts import missing_part


@pytest.fixture
def engine():
    missing_part("Docker engine", "connection refused at unix:///var/run/docker.sock")


def test_needs_the_engine(engine):
    pass


def test_needs_chromium():
    missing_part("Chromium", "/usr/bin/chromium does not exist")


def test_a_plain_skip_naming_redis():
    pytest.skip("no Redis: connection refused")


def test_needs_playwright():
    pytest.importorskip("playwright_not_installed_anywhere")


def test_opt_in():
    pytest.skip("set MLPORTAL_TEST_DEBOOTSTRAP=1 to run it")


def test_passes():
    assert True
'''


def run(tmp_path: Path, flag: str | None) -> dict[str, str]:
    (tmp_path / "conftest.py").write_text("from tests.real_parts import pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_tiny.py").write_text(textwrap.dedent(TESTS))
    report = tmp_path / "outcomes.json"
    (tmp_path / "collect_outcomes.py").write_text(textwrap.dedent(f'''
        import json
        outcomes = {{}}
        def pytest_runtest_logreport(report):
            name = report.nodeid.split("::")[-1]
            if report.failed or report.skipped or (report.when == "call" and name not in outcomes):
                outcomes[name] = report.outcome
        def pytest_sessionfinish(session):
            open({str(report)!r}, "w").write(json.dumps(outcomes))
    '''))
    env = {k: v for k, v in os.environ.items() if k != "MLPORTAL_REQUIRE_REAL_PARTS"}
    if flag is not None:
        env["MLPORTAL_REQUIRE_REAL_PARTS"] = flag
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path)])
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:django",
                    "-p", "collect_outcomes", "--rootdir", str(tmp_path), str(tmp_path / "test_tiny.py")],
                   cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return json.loads(report.read_text())


def test_without_the_flag_missing_parts_are_skipped(tmp_path):
    outcomes = run(tmp_path, None)
    assert outcomes == {"test_needs_the_engine": "skipped", "test_needs_chromium": "skipped",
                        "test_a_plain_skip_naming_redis": "skipped", "test_needs_playwright": "skipped",
                        "test_opt_in": "skipped", "test_passes": "passed"}


def test_with_the_flag_a_missing_part_fails_and_other_skips_stay(tmp_path):
    outcomes = run(tmp_path, "1")
    assert outcomes["test_needs_the_engine"] == "failed"  # skipped in a fixture: an error
    assert outcomes["test_needs_chromium"] == "failed"
    assert outcomes["test_a_plain_skip_naming_redis"] == "failed"
    assert outcomes["test_needs_playwright"] == "failed"
    assert outcomes["test_opt_in"] == "skipped"
    assert outcomes["test_passes"] == "passed"


def test_the_ci_script_sets_the_flag():
    script = (REPO / ".ci" / "run").read_text()
    assert "export MLPORTAL_REQUIRE_REAL_PARTS=1" in script
