"""The service page's Traffic tab in Chromium: revisions with their weights and last-hour figures,
the weight history, the chart, and the forms (weight, promote, abort) that post to the page."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.frontend.conftest import csp_reports, watched_page  # noqa: F401 (page fixtures that fail on CSP violations)

pytestmark = [pytest.mark.e2e]


def _service_with_a_canary(workspace, owner):
    from deployments.models import Environment, Service, ServiceRevision
    from gateway.models import TrafficChange, TrafficMinute
    from registry.models import Image, Manifest

    environment = Environment.objects.create(workspace=workspace, name="local")
    manifest = Manifest.objects.create(workspace=workspace, name="churn", version=1, content_hash="0" * 64)
    live_image = Image.objects.create(workspace=workspace, name="churn", version=1, manifest=manifest, tag="t:1", status="succeeded")
    new_image = Image.objects.create(workspace=workspace, name="churn", version=2, manifest=manifest, tag="t:2", status="succeeded")
    service = Service.objects.create(workspace=workspace, name="churnpred", environment=environment, image=live_image,
                                     status="healthy", created_by=owner,
                                     rollout={"mode": "canary", "status": "running", "revision": 2, "weight": 10,
                                              "image_ref": new_image.ref, "image": str(new_image.pk)})
    ServiceRevision.objects.create(service=service, number=1, image=live_image, image_ref=live_image.ref, reason="create")
    ServiceRevision.objects.create(service=service, number=2, image=new_image, image_ref=new_image.ref, reason="canary",
                                   role="canary")
    minute = timezone.now().replace(second=0, microsecond=0)
    for revision, requests, errors in ((1, 90, 0), (2, 10, 1)):
        for back in (0, 1):
            TrafficMinute.objects.create(service=service, revision=revision, minute=minute - timedelta(minutes=back),
                                         writer="w", requests=requests, errors=errors, latency_sum=requests * 0.005,
                                         latency_buckets=[0, 0, requests] + [0] * 15)
    TrafficChange.objects.create(service=service, revision=2, mode="canary", action="start", weight=10, created_by=owner)
    return service


def test_the_traffic_tab_shows_revisions_weights_figures_and_history(owner, workspace, live_server, watched_page,
                                                                      csp_reports, transactional_db):
    service = _service_with_a_canary(workspace, owner)
    page, problems = watched_page(owner)
    page.goto(f"{live_server.url}/services/{service.pk}/")
    page.click("button[data-tab=traffic]")
    page.wait_for_selector("#traffic-rows tr[data-revision='2']")
    rows = {r.get_attribute("data-revision"): [c.inner_text() for c in r.locator("td").all()]
            for r in page.locator("#traffic-rows tr").all()}
    assert rows["1"][2:8] == ["live", "90", "0", "180", "0", "5"] and rows["2"][2:8] == ["canary", "10", "0", "20", "2", "5"]
    assert "A canary of image churn:2 is running (revision 2, 10%)" in page.locator("[data-testid=traffic-rollout]").inner_text()
    assert page.locator("#traffic-history-rows tr").first.locator("td").nth(3).inner_text() == "start"
    page.wait_for_function("() => document.querySelector('[data-module=service-traffic]').dataset.loaded === 'true'")
    assert page.evaluate("() => !!window.Chart && !!window.Chart.getChart(document.getElementById('traffic-chart'))")

    page.fill("#traffic-weight", "150")
    assert page.evaluate("() => document.getElementById('traffic-weight').checkValidity()") is False  # 1–99 in the form too
    page.fill("#traffic-weight", "30")
    page.click("text=Set weight")
    page.wait_for_load_state()
    service.refresh_from_db()
    assert service.rollout["weight"] == 30
    problems.assert_none()
    assert csp_reports() == []


def test_the_page_forms_refuse_bad_weights_and_promote_or_abort_only_a_running_rollout(owner, workspace, page_client, db):
    service = _service_with_a_canary(workspace, owner)
    client = page_client(owner)
    response = client.post(f"/services/{service.pk}/traffic/", {"action": "weight", "weight": "150"}, follow=True)
    assert "from 1 to 99" in response.content.decode()
    service.refresh_from_db()
    assert service.rollout["weight"] == 10
    client.post(f"/services/{service.pk}/traffic/", {"action": "abort"}, follow=True)
    service.refresh_from_db()
    assert service.rollout["status"] == "aborting"  # the worker stops the canary's containers
    response = client.post(f"/services/{service.pk}/traffic/", {"action": "promote"}, follow=True)
    assert "nothing to promote" in response.content.decode()
