"""What the pages' markup promises to assistive technology and to their scripts: live logs and live
statuses are polite live regions, page behaviour is named by data-module with its URLs in data-*
attributes, confirmations are data-confirm, the workspace switcher has a real submit button."""
from __future__ import annotations

import re

import pytest

from deployments.models import Service
from registry.models import Image
from tests.runs.conftest import blank, finished_run  # noqa: F401 (shared fixtures)

pytestmark = pytest.mark.django_db


def tag(html: str, marker: str) -> str:
    """The opening tag that carries `marker` (an id="…" or data-testid="…")."""
    match = re.search(r"<[a-z]+[^>]*" + re.escape(marker) + r"[^>]*>", html)
    assert match, marker
    return match.group(0)


@pytest.fixture
def service(owner_api, create_realtime):
    response = create_realtime(owner_api, "churnpred")
    assert response.status_code == 201, response.json()
    return Service.objects.get()


def test_the_run_page_log_and_status_are_live_regions_and_its_urls_are_attributes(page_client, owner, blank,
                                                                                  finished_run):  # noqa: F811
    run = finished_run(blank, owner, metrics={"loss": [(0, 1.0), (1, 0.5)]})
    html = page_client(owner).get(f"/runs/{run.pk}/").content.decode()
    assert 'aria-live="polite"' in tag(html, 'id="run-log"')
    assert 'aria-live="polite"' in tag(html, 'id="run-status"') and 'role="status"' in tag(html, 'id="run-status"')
    root = tag(html, 'data-module="run-detail"')
    for attr in (f'data-run-url="/api/v1/runs/{run.pk}/"', f'data-run-page="/runs/{run.pk}/"', 'data-active="false"',
                 'data-can-write="true"'):
        assert attr in root, attr
    assert "js/run_detail.js" in html and "js/metric_chart.js" in html


def test_a_reader_gets_no_register_link_config(page_client, owner, reader, blank, finished_run):  # noqa: F811
    run = finished_run(blank, owner)
    assert 'data-can-write="false"' in tag(page_client(reader).get(f"/runs/{run.pk}/").content.decode(), "data-run-url")


def test_the_image_and_service_pages_are_live_regions_with_data_config(page_client, owner, service):
    client = page_client(owner)
    image = Image.objects.get()
    html = client.get(f"/images/{image.pk}/").content.decode()
    assert 'aria-live="polite"' in tag(html, 'id="build-log"') and 'aria-live="polite"' in tag(html, 'id="image-status"')
    assert f'data-status-url="/api/v1/images/{image.pk}/"' in tag(html, 'data-module="image-detail"')
    assert 'data-confirm="Delete this image from the portal and the Docker engine?"' in html

    html = client.get(f"/services/{service.pk}/").content.decode()
    assert 'aria-live="polite"' in tag(html, 'id="service-logs"') and 'role="status"' in tag(html, 'id="service-status"')
    root = tag(html, 'data-module="service-detail"')
    assert f'data-metrics-url="/api/v1/services/{service.pk}/metrics/"' in root
    assert 'data-confirm="Delete this service and stop its containers?"' in html


def test_the_workspace_switcher_has_a_submit_button_and_no_change_handler(page_client, owner, workspace):
    html = page_client(owner).get("/").content.decode()
    form = html[html.index('<form class="ws-switch"'):html.index("</form>", html.index('<form class="ws-switch"'))]
    assert '<button type="submit"' in form and "onchange" not in form and "<noscript>" not in form
