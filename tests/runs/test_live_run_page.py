"""The run page in a real browser: log lines and the status badge change live, with no reload,
while the worker runs the script in Docker."""
from __future__ import annotations

import pytest

from runs import services
from runs.models import Run
from tests.helpers import wait_until

SCRIPT = b"import time\nfor i in range(6):\n    print(f'line {i} <b>not bold</b>', flush=True)\n    time.sleep(1)\n"


@pytest.mark.e2e
@pytest.mark.docker
@pytest.mark.integration
def test_the_run_page_streams_the_log_and_updates_the_status_without_reloading(
    celery_worker, churn_env_image, live_server, browser_page, owner, workspace
):
    project = services.project_create(workspace=workspace, name="live", user=owner, template="churn")
    services.project_file_put(project=project, path="ticks.py", content=SCRIPT, user=owner)
    page = browser_page(owner)
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.select_option("select[name=script]", "ticks.py")
    page.click("[data-testid=run-button]")
    page.wait_for_url("**/runs/*/")
    page.evaluate("window.__noReload = true")
    page.click("button[data-tab=logs]")
    log = page.locator("[data-testid=run-log]")
    wait_until(lambda: "line 1" in log.inner_text(), timeout=120, interval=0.2, message="live log lines")
    run = Run.objects.get(project=project)
    assert run.status == "running" and "line 5" not in log.inner_text()
    assert page.locator("#run-status .badge").inner_text() == "running"
    assert "<b>not bold</b>" in log.inner_text()  # shown as text, never parsed as HTML
    wait_until(lambda: page.locator("#run-status .badge").inner_text() == "completed", timeout=60, interval=0.3,
               message="the badge to turn completed")
    wait_until(lambda: "line 5" in log.inner_text(), timeout=5, message="the last line")
    assert page.evaluate("window.__noReload") is True
    assert page.locator("#run-exit").inner_text() == "0"
