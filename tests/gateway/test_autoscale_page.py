"""The service page's Autoscale tab in Chromium: the chart of replicas and utilisation over time
from the autoscaler's samples, its decisions, and the settings form posting to the page (a bad
value refused with the message, nothing changed)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.frontend.conftest import csp_reports, watched_page  # noqa: F401 (page fixtures that fail on CSP violations)

pytestmark = [pytest.mark.e2e]


def _autoscaled_service(workspace, owner):
    from deployments.models import Environment, Service, ServiceEvent, ServiceLoad
    from registry.models import Image, Manifest

    environment = Environment.objects.create(workspace=workspace, name="local")
    manifest = Manifest.objects.create(workspace=workspace, name="churn", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="churn", version=1, manifest=manifest, tag="t:1", status="succeeded")
    service = Service.objects.create(workspace=workspace, name="churnpred", environment=environment, image=image,
                                     status="healthy", created_by=owner, replicas=2, autoscale_enabled=True,
                                     autoscale_max_replicas=3)
    now = timezone.now()
    for back, replicas, busy in ((6, 1, 0.0), (5, 1, 0.95), (4, 2, 1.0), (3, 2, 0.9), (2, 2, 0.2), (1, 2, 0.1)):
        ServiceLoad.objects.create(service=service, at=now - timedelta(seconds=back), replicas=replicas, workers=replicas,
                                   busy=busy, utilization=100 * busy / replicas, desired=replicas)
    ServiceEvent.objects.create(service=service, message="Autoscaler: 1 → 2 replica(s): utilisation 95% of 1 worker(s) "
                                                         "over the last 1 s is above the target 70%")
    return service


def test_the_autoscale_tab_charts_replicas_and_utilisation_and_saves_its_settings(owner, workspace, live_server, watched_page,
                                                                                  csp_reports, transactional_db):
    service = _autoscaled_service(workspace, owner)
    page, problems = watched_page(owner)
    page.goto(f"{live_server.url}/services/{service.pk}/")
    page.click("button[data-tab=autoscale]")
    page.wait_for_function("() => document.querySelector('[data-module=service-autoscale]').dataset.samples === '6'")
    chart = page.evaluate("""() => { const c = window.Chart.getChart(document.getElementById('autoscale-chart'));
                                      return [c.data.datasets[0].data, c.data.datasets[1].data.map(Math.round)]; }""")
    assert chart == [[1, 1, 2, 2, 2, 2], [0, 95, 50, 45, 10, 5]]
    assert "Autoscaler: 1 → 2 replica(s)" in page.locator("[data-testid=autoscale-decisions]").inner_text()
    assert "On: 1 to 3 replicas, target 70%" in page.locator("[data-testid=autoscale-summary]").inner_text()

    page.fill("#as-min", "3")
    page.fill("#as-max", "2")
    page.click("text=Save autoscaling")
    page.wait_for_load_state()
    assert "is above autoscale_max_replicas (2)" in page.content()
    service.refresh_from_db()
    assert (service.autoscale_min_replicas, service.autoscale_max_replicas) == (1, 3)

    page.click("button[data-tab=autoscale]")
    page.fill("#as-target", "55")
    page.click("text=Save autoscaling")
    page.wait_for_load_state()
    service.refresh_from_db()
    assert service.autoscale_target_utilization == 55 and service.autoscale_enabled
    problems.assert_none()
    assert csp_reports() == []
