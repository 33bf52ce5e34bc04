"""A service page asks the engine for container logs only while its Logs tab shows (issue 11: pages
never wait on an engine; logs on demand may). The environment's engine is a socket that accepts
and never answers, so every connection the page causes is counted: none on the Overview tab, a
poll once the Logs tab opens (answered within the short timeout with a clear message), and none
again once another tab is chosen. The old page polled the logs every second from the moment it
loaded, whichever tab was open."""
from __future__ import annotations

import time

import pytest

from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def far_service(workspace, owner, silent_engine):
    from deployments.models import Environment, Service, ServiceReplica
    from registry.models import Image, Manifest

    environment = Environment.objects.create(workspace=workspace, name="far", engine_url=silent_engine.url,
                                             created_by=owner)
    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag="mlportal/t:1",
                                 status=Image.Status.SUCCEEDED)
    service = Service.objects.create(workspace=workspace, name="svc", environment=environment, image=image,
                                     status=Service.Status.HEALTHY, primary_key="k1", secondary_key="k2", proxy_key="k3")
    ServiceReplica.objects.create(service=service, number=1, container_id="c" * 64, host="127.0.0.1",
                                  port=silent_engine.port, state="running", ready=True)
    return service


def test_the_service_page_asks_for_logs_only_while_the_logs_tab_shows(live_server, watched_page, owner, far_service,
                                                                      silent_engine):
    from deployments.selectors import LOGS_TIMEOUT

    page, problems = watched_page(owner)
    page.goto(f"{live_server.url}/services/{far_service.pk}/")
    assert page.locator("[role=tab][data-tab=overview]").get_attribute("aria-selected") == "true"
    page.wait_for_timeout(3000)  # three of the old page's log polls
    assert silent_engine.accepted == 0, "the Overview tab asked the engine for logs"

    page.click("[role=tab][data-tab=logs]")
    wait_until(lambda: silent_engine.accepted >= 1, timeout=5, message="the Logs tab's request")
    page.wait_for_function("() => document.getElementById('service-logs').textContent.includes('logs unavailable')",
                           timeout=(LOGS_TIMEOUT * 3) * 1000)
    assert "did not give the logs within" in page.locator("#service-logs").inner_text()

    page.click("[role=tab][data-tab=history]")
    time.sleep(LOGS_TIMEOUT + 1)  # a request under way when the tab changed ends by then
    asked = silent_engine.accepted
    page.wait_for_timeout(3000)
    assert silent_engine.accepted == asked, "the page went on asking for logs behind another tab"
    problems.assert_none()


def test_the_metrics_tab_reads_the_snapshot_and_asks_the_replicas_only_on_refresh(live_server, watched_page, owner,
                                                                                  far_service, silent_engine):
    # The replica's port is the silent socket too: the tab's 5 s reads never reach it, the
    # "Ask the replicas now" button does (?live=1), and says within its 1 s timeout who did not answer.
    from deployments.models import Environment
    from deployments.replica_metrics import LIVE_TIMEOUT
    from django.utils import timezone

    Environment.objects.filter(pk=far_service.environment_id).update(engine_ok=True, engine_checked_at=timezone.now(),
                                                                    engine_answered_at=timezone.now())
    page, problems = watched_page(owner)
    page.goto(f"{live_server.url}/services/{far_service.pk}/#metrics")
    refresh = page.locator("[data-testid=metrics-refresh]")
    refresh.wait_for(state="visible")
    page.wait_for_timeout(6000)  # one of the tab's snapshot reads
    assert silent_engine.accepted == 0, "the Metrics tab's periodic read reached a replica"
    started = time.monotonic()
    refresh.click()
    page.wait_for_function("() => document.getElementById('metrics-note').textContent.includes('did not answer')",
                           timeout=(LIVE_TIMEOUT + 5) * 1000)
    assert time.monotonic() - started < LIVE_TIMEOUT + 5 and silent_engine.accepted == 1
    assert f"did not answer /metrics within {LIVE_TIMEOUT:g} s" in page.locator("#metrics-note").inner_text()
    assert refresh.is_enabled()
    problems.assert_none()
