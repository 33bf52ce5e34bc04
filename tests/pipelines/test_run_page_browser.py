"""The pipeline run page in Chromium under the CSP: its statuses, logs and reason follow what the
worker writes (read from the API every second), with no violation or console error."""
from __future__ import annotations

import pytest

from pipelines import services
from pipelines.models import PipelineRun, PipelineStep
from tests.frontend.conftest import watched_page  # noqa: F401

pytestmark = pytest.mark.e2e


def test_the_pipeline_run_page_follows_the_steps_live(live_server, watched_page, owner, workspace, project,  # noqa: F811
                                                      recorded_service):
    pipeline = services.pipeline_create(workspace=workspace, user=owner, name="retrain", project=project,
                                        script="train.py", service=recorded_service())
    # The rows a trigger writes, without its task: a session's worker must not take this run.
    prun = PipelineRun.objects.create(workspace=workspace, pipeline=pipeline, number=1, triggered_by=owner)
    PipelineStep.objects.bulk_create([PipelineStep(pipeline_run=prun, position=i, name=name)
                                      for i, name in enumerate(PipelineStep.ORDER)])
    page, problems = watched_page(owner)
    page.goto(f"{live_server.url}/pipeline-runs/{prun.pk}/")
    assert page.locator("[data-testid=pipeline-run-status] .badge").inner_text() == "queued"
    for name in pipeline.runs.get().steps.values_list("name", flat=True):
        assert page.locator(f"tr[data-step={name}] .badge").inner_text() == "pending"
    # What the worker writes as the run goes (here by hand, the same rows).
    PipelineRun.objects.filter(pk=prun.pk).update(status="running")
    PipelineStep.objects.filter(pipeline_run=prun, name="run").update(status="failed", log="[12:00:00] Run churn #1 failed: exit 3\n")
    PipelineRun.objects.filter(pk=prun.pk).update(status="failed", reason="Step run failed: Run churn #1 failed: exit 3.")
    page.wait_for_function("() => document.querySelector('[data-testid=pipeline-run-status] .badge').textContent === 'failed'")
    assert page.locator("tr[data-step=run] .badge").inner_text() == "failed"
    assert "exit 3" in page.locator("tr[data-step-log=run] .step-log").inner_text()
    assert page.locator("[data-testid=pipeline-run-reason]").inner_text().startswith("Step run failed")
    problems.assert_none()
