"""The service page's Data tab in Chromium: rows per hour, dropped count, latest rows, download,
add to project, drift (a check the real worker computes while the page follows it) with overlaid
histograms, ground truth upload — under the page's CSP."""
from __future__ import annotations

import datetime as dt

import pytest

from tests.frontend.conftest import csp_reports, watched_page  # noqa: F401 (page fixtures that fail on CSP violations)
from tests.monitoring.test_monitoring_data import REFERENCE_PATH, churn_records, spool_row

pytestmark = [pytest.mark.e2e]


def test_the_data_tab_shows_rows_drift_and_ground_truth(owner, workspace, live_server, watched_page, csp_reports,
                                                        celery_worker, tmp_path):
    from deployments.models import Environment, Service
    from monitoring import worker
    from monitoring.models import Capture, DriftReport
    from registry.models import Image, Manifest
    from runs.models import ProjectFile
    from runs.services import project_create

    # The capture storage is the data folder's, which the worker computing the drift check shares.
    environment = Environment.objects.create(workspace=workspace, name="local")
    manifest = Manifest.objects.create(workspace=workspace, name="churn", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="churn", version=1, manifest=manifest, tag="t:1", status="succeeded")
    service = Service.objects.create(workspace=workspace, name="churnpred", environment=environment, image=image,
                                     status="healthy", created_by=owner)
    Capture.objects.create(service=service, mode="both", percent=25, dropped=3)
    project_create(workspace=workspace, name="churn", user=owner, template="churn")
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    records = churn_records(300, seed=12, shift_age=30)
    worker.store(service, [spool_row(f"t{i}", records[i * 30:(i + 1) * 30], ["0"] * 30, at=now - 120 + i) for i in range(10)])

    page, problems = watched_page(owner)
    page.goto(f"{live_server.url}/services/{service.pk}/")
    page.click("button[data-tab=data]")
    page.wait_for_function("() => document.querySelector('[data-module=service-data]').dataset.loaded === 'true'")
    assert page.inner_text("[data-testid=data-total]") == "300" and page.inner_text("[data-testid=data-dropped]") == "3"
    assert page.inner_text("#data-mode") == "both 25%"
    assert page.locator("#data-latest-rows tr").first.get_attribute("data-request-id") == "t9#29"
    assert "age" in page.inner_text("#data-latest-head")
    assert page.evaluate("() => window.Chart.getChart(document.getElementById('data-chart')).data.datasets[0].data.reduce((a, b) => a + b, 0)") == 300

    # Download: the form is a plain GET of the API (works without JavaScript too).
    with page.expect_download() as caught:
        page.click("[data-testid=data-download] button")
    lines = open(caught.value.path()).read().splitlines()
    assert len(lines) == 301 and lines[0].startswith("request_id,time,revision,model_version")

    page.fill("#data-project", "churn")
    page.fill("#data-path", "data/captured.csv")
    page.click("[data-testid=data-to-project] button")
    page.wait_for_selector("#data-to-project-result:has-text('Added 300 rows')")
    assert ProjectFile.objects.filter(project__name="churn", path="data/captured.csv").exists()

    # Drift: a missing file is named; then the template's CSV: age drifted, with its histogram.
    page.fill("#drift-project", "churn")
    page.fill("#drift-path", "data/nope.csv")
    page.click("#drift-settings button[type=submit]")
    page.wait_for_selector("#drift-summary.error:has-text('no file')")
    # That 400 was asked for: the page showed its message. Nothing else may fail.
    assert problems.console_errors and all("/drift/" in e or "status of 400" in e for e in problems.console_errors), problems.console_errors
    problems.console_errors.clear()
    page.fill("#drift-path", REFERENCE_PATH)
    page.fill("#drift-share", "0.02")
    page.click("#drift-settings button[type=submit]")
    page.wait_for_selector("#drift-summary:has-text('Reference saved')")
    page.click("[data-testid=drift-compute]")
    # The page follows the worker's job (its step, then the report), never waiting on the POST.
    page.wait_for_function("() => document.querySelector('[data-module=service-data]').dataset.driftJob === 'succeeded'",
                           timeout=120_000)
    page.wait_for_function("() => document.querySelector('[data-module=service-data]').dataset.drift === 'drawn'")
    drifted = [r.get_attribute("data-feature") for r in page.locator("#drift-rows tr[data-drifted=true]").all()]
    assert drifted == ["age"]
    assert "Drifted: 1 of" in page.inner_text("[data-testid=drift-summary]")
    assert page.locator("#drift-histograms [data-feature=age] canvas").count() == 1
    assert DriftReport.objects.filter(service=service, drifted=True).count() == 1

    # Ground truth: a CSV upload; accuracy per day and version.
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\n" + "".join(f"t0#{j},{0 if j < 15 else 1}\n" for j in range(30)) + "ghost,1\n")
    page.set_input_files("#truth-upload input[type=file]", str(labels))
    page.click("#truth-upload button")
    page.wait_for_selector("#truth-result:has-text('31 labels stored; 1 match no captured request yet')")
    page.wait_for_selector("#truth-rows tr td:has-text('0.500')")
    problems.assert_none()
    assert csp_reports() == []
