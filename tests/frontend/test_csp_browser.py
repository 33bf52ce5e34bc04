"""Every main page of the portal in Chromium under the Content-Security-Policy: not one violation
(no `securitypolicyviolation` event, no "Refused to …" console error, no uncaught error), and the
report endpoint hears nothing — while the pages do their live work (log tails, status polls, charts,
the service's tabs, Swagger UI, the Django admin). A final inline script injected on purpose proves
the watchers and the report endpoint do catch a violation.

Real parts: the live portal, the Celery worker, the Docker engine (a real run, a real service)."""
from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model

from runs import services as run_services
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.integration]

METRICS_SCRIPT = b"""import os
from mlportal_runtime import get_logger
log = get_logger()
os.makedirs("outputs", exist_ok=True)
open("outputs/metrics.txt", "w").write("loss and accuracy per epoch")
for step in range(8):
    print(f"epoch {step}", flush=True)
    log.log("loss", 1.0 / (step + 1), step=step)
    log.log("accuracy", 0.5 + step / 20, step=step)
"""
ADMIN_PASSWORD = "admin-pw-for-csp-1"


def assert_strict_policy(response) -> None:
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy, (response.url, policy)


def click_every_tab(page) -> None:
    """Opens each tab of the page in turn (so a tab added later is walked too), then the first again."""
    names = page.eval_on_selector_all("[role=tab]", "(tabs) => tabs.map((t) => t.dataset.tab)")
    for name in names[1:] + names[:1]:
        page.click(f"[role=tab][data-tab={name}]")
        assert page.locator(f"[role=tab][data-tab={name}]").get_attribute("aria-selected") == "true"


def visit(page, url: str):
    response = page.goto(url)
    assert response.status == 200, (url, response.status)
    assert_strict_policy(response)
    page.wait_for_load_state("load")
    return response


def test_every_main_page_runs_under_the_policy_without_a_violation(
    docker_worker, live_server, watched_page, csp_reports, real_run, create_realtime, owner, owner_api, workspace,
    tmp_path,
):
    base = live_server.url
    project = run_services.project_create(workspace=workspace, name="churn_prediction", user=owner, template="churn")
    run_services.project_file_put(project=project, path="metrics.py", content=METRICS_SCRIPT, user=owner)
    first, second = real_run(project, owner, "metrics.py"), real_run(project, owner, "metrics.py")
    created = create_realtime(owner_api, "churnpred")
    assert created.status_code == 201, created.content
    service = wait_until(lambda: (lambda s: s if s["status"] in ("healthy", "failed") else None)(
        owner_api.get("/api/v1/services/churnpred/").json()), timeout=900, interval=0.5, message="the service")
    assert service["status"] == "healthy", service["error"]
    image_id = owner_api.get("/api/v1/images/").json()["results"][0]["id"]
    model_id = owner_api.get("/api/v1/models/").json()["results"][0]["id"]
    manifest_id = owner_api.get("/api/v1/manifests/").json()["results"][0]["id"]

    page, problems = watched_page(owner)
    for path in ("/", "/projects/", f"/projects/{project.pk}/", "/runs/", "/models/", f"/models/{model_id}/",
                 "/manifests/", f"/manifests/{manifest_id}/", "/images/", "/services/", "/environments/",
                 "/environments/local/", "/activity/", "/tokens/", "/workspaces/", "/workspaces/team/", "/healthz",
                 f"/runs/compare/?ids={first.pk}&ids={second.pk}", "/password/", "/models/register/",
                 "/manifests/new/", "/services/new/", f"/runs/{first.pk}/outputs/metrics.txt?preview=1"):
        visit(page, base + path)
        click_every_tab(page)
    page.goto(f"{base}/runs/compare/?ids={first.pk}&ids={second.pk}")
    page.wait_for_function("() => document.querySelector('[data-testid=compare-chart]').dataset.state === 'drawn'")

    # The project page's tabs, one after the other.
    visit(page, f"{base}/projects/{project.pk}/")
    for tab in ("files", "settings", "properties", "dashboard"):
        page.click(f"button[data-tab={tab}]")

    # The run page: the log tail ends, the metrics chart draws.
    visit(page, f"{base}/runs/{first.pk}/")
    page.click("button[data-tab=logs]")
    page.wait_for_function("() => document.getElementById('run-log').dataset.done === 'true'")
    assert "epoch 7" in page.locator("#run-log").inner_text()
    page.click("button[data-tab=metrics]")
    page.wait_for_function("() => document.querySelector('[data-testid=metric-chart]').dataset.state === 'drawn'")
    page.click("button[data-tab=outputs]")

    # The image page: the build log and the status poll.
    visit(page, f"{base}/images/{image_id}/")
    page.click("button[data-tab=log]")
    page.wait_for_function("() => document.getElementById('build-log').dataset.done === 'true'")
    page.click("button[data-tab=usage]")

    # The service page: every tab, keys on demand, a test call, live logs, metrics with their chart.
    visit(page, f"{base}/services/{service['id']}/")
    page.wait_for_selector("[data-testid=replica-table] td.mono")
    page.click("[data-testid=reveal-keys]")
    page.wait_for_selector("#keys:not([hidden])")
    page.click("button[data-tab=usage]")
    page.click("button[data-tab=test]")
    page.click("[data-testid=test-send]")
    page.wait_for_function("() => document.querySelector('[data-testid=test-status]').textContent.includes('200')")
    page.click("button[data-tab=logs]")
    page.wait_for_function("() => document.getElementById('service-logs').textContent.includes('POST /score')")
    page.click("button[data-tab=metrics]")
    page.wait_for_function("() => document.getElementById('m-requests').textContent !== '—'", timeout=15_000)
    assert page.evaluate("() => !!Chart.getChart(document.getElementById('metrics-chart'))")
    page.click("button[data-tab=history]")
    click_every_tab(page)

    # Swagger UI: its bundle, its start-up script (a file of its own) and the schema it renders.
    visit(page, f"{base}/api/v1/docs/")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    page.click(".swagger-ui .opblock-summary >> nth=0")
    page.wait_for_selector(".swagger-ui .opblock-body")

    # The sign-in page and the Django admin, as someone who is not signed in yet.
    get_user_model().objects.create_superuser("root", password=ADMIN_PASSWORD)
    anonymous, anonymous_problems = watched_page()
    visit(anonymous, f"{base}/login/")
    visit(anonymous, f"{base}/admin/login/")
    anonymous.fill("#id_username", "root")
    anonymous.fill("#id_password", ADMIN_PASSWORD)
    anonymous.click("input[type=submit]")
    anonymous.wait_for_url(f"{base}/admin/")
    for path in ("/admin/", "/admin/auth/user/", "/admin/auth/user/add/"):
        visit(anonymous, base + path)
    anonymous.click("#toggle-nav-sidebar")  # the admin's own script, under the policy

    page.wait_for_timeout(1500)  # reports are sent after the fact; give them time to arrive
    problems.assert_none()
    anonymous_problems.assert_none()
    assert csp_reports() == []

    # The watchers are live: an inline script is refused, seen in the page and reported.
    visit(page, f"{base}/runs/")
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.__ran = true';"
                  " document.body.appendChild(s); }")
    assert page.evaluate("() => window.__ran === undefined")
    wait_until(lambda: problems.violations, timeout=10, message="the violation event")
    assert problems.violations[0]["directive"] in ("script-src-elem", "script-src"), problems.violations
    reports = wait_until(csp_reports, timeout=15, message="the report at /csp-report/")
    assert "directive=script-src" in reports[0] and "/runs/" in reports[0], reports
    print(json.dumps(problems.violations[0]))
