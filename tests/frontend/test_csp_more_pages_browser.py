"""The pages the main CSP walk (test_csp_browser.py) does not reach run under the policy too: the
pipelines, a pipeline and a pipeline run (its live steps), the webhooks and a webhook, the Storage
page, and a service page's every tab (autoscale and data included) while its engine never answers.
Not one violation, console or page error, and the report endpoint hears nothing. The rows are made
directly (no Docker build): the policy is about the pages' markup and scripts, not the engine."""
from __future__ import annotations

import pytest

from tests.frontend.test_csp_browser import click_every_tab, visit
from tests.pipelines.conftest import project, recorded_service  # noqa: F401 (shared fixtures)

pytestmark = [pytest.mark.e2e]


def test_the_pipeline_webhook_storage_and_service_pages_run_without_a_violation(
        live_server, watched_page, csp_reports, owner, workspace, project, recorded_service, silent_engine):  # noqa: F811
    from deployments.models import Environment
    from pipelines import services as pipeline_services
    from pipelines import webhooks
    from pipelines.models import PipelineRun

    service = recorded_service()
    Environment.objects.filter(pk=service.environment_id).update(engine_url=silent_engine.url)
    pipeline = pipeline_services.pipeline_create(workspace=workspace, user=owner, name="churn-retrain", project=project,
                                                 script="train.py", service=service, gate="acc >= 0.8")
    run = PipelineRun.objects.create(workspace=workspace, pipeline=pipeline, number=1, status=PipelineRun.Status.RUNNING,
                                     triggered_by=owner)
    hook = webhooks.webhook_create(workspace=workspace, name="chat", url="https://hooks.example.com/a", user=owner)

    base = live_server.url
    page, problems = watched_page(owner)
    for path in ("/pipelines/", f"/pipelines/{pipeline.pk}/", f"/pipeline-runs/{run.pk}/", "/webhooks/",
                 f"/webhooks/{hook.pk}/", "/storage/", f"/services/{service.pk}/"):
        visit(page, base + path)
        click_every_tab(page)
    page.wait_for_timeout(1500)  # the run page's and the service page's polls go on; reports come after the fact
    problems.assert_none()
    assert csp_reports() == []
    assert silent_engine.accepted == 0  # the service page read rows, it asked no engine
