"""The service page in a browser: the lab says testing from the command line "is not the most
convenient way" — here the Test tab sends the schema's example through the portal's scoring proxy
and shows the answer, its status code and the latency; keys are revealed on demand; logs are live."""
from __future__ import annotations

import re

import pytest

from tests.deployments.conftest import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.e2e]


def test_the_test_tab_scores_the_example_through_the_portal(deploy_worker, owner_api, create_realtime, owner,
                                                            live_server, browser_page):  # noqa: F811
    create_realtime(owner_api, "churnpred")
    service = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    assert service["status"] == "healthy", service["error"]
    keys = owner_api.get("/api/v1/services/churnpred/keys/").json()
    page = browser_page(owner)
    page.goto(f"{live_server.url}/services/{service['id']}/")
    page.wait_for_selector("[data-testid=replica-table] td.mono")  # the live status filled the replicas in
    assert page.locator("[data-testid=service-status] .badge").inner_text() == "healthy"

    page.click("button[data-tab=test]")
    assert '"input_df"' in page.locator("[data-testid=test-body]").input_value()
    page.click("[data-testid=test-send]")
    page.wait_for_function("() => document.querySelector('[data-testid=test-status]').textContent.includes('200')")
    assert page.locator("[data-testid=test-response]").inner_text().strip() == '"0"'
    assert re.fullmatch(r"\d+ ms", page.locator("[data-testid=test-latency]").inner_text())

    page.locator("[data-testid=test-body]").fill('{"input_df": [{"age": "twelve"}]}')
    page.click("[data-testid=test-send]")
    page.wait_for_function("() => document.querySelector('[data-testid=test-status]').textContent.includes('400')")
    assert "invalid_input" in page.locator("[data-testid=test-response]").inner_text()

    page.click("button[data-tab=overview]")
    page.click("[data-testid=reveal-keys]")
    page.wait_for_selector("#keys:not([hidden])")
    assert page.locator("#key-primary").inner_text() == keys["primary"]
    assert page.locator("#key-secondary").inner_text() == keys["secondary"]

    page.click("button[data-tab=logs]")
    page.wait_for_function("() => document.querySelector('[data-testid=service-logs]').textContent.includes('POST /score')")
