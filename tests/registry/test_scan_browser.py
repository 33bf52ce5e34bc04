"""The scan in Chromium: an owner sees the canary's verdict and globals, accepts it (the page asks
first, under the portal's CSP), and the list and the manifest page carry the badges."""
from __future__ import annotations

import io
import pickle

import pytest

from registry.models import Model
from tests.registry.test_scanning import OsSystem
from workspaces.models import Activity

pytestmark = [pytest.mark.e2e]


def test_an_owner_reads_the_verdict_and_accepts_the_canary_in_the_browser(live_server, browser_page, owner, owner_api,
                                                                         workspace, tmp_path):
    upload = io.BytesIO(pickle.dumps(OsSystem(tmp_path / "ran")))
    upload.name = "model.pkl"
    created = owner_api.post("/api/v1/models/", {"name": "barscanary", "file": upload}, format="multipart").json()
    page = browser_page(owner)
    questions = []
    page.on("dialog", lambda d: (questions.append(d.message), d.accept()))
    page.goto(f"{live_server.url}/models/")
    assert page.locator("[data-testid=model-table] [data-testid=scan-badge]").get_attribute("data-verdict") == "dangerous"
    page.goto(f"{live_server.url}/models/{created['id']}/")
    assert page.locator("[data-testid=scan] [data-testid=scan-badge]").inner_text() == "Dangerous"
    assert "posix.system" in page.locator("[data-testid=scan-globals]").inner_text()
    assert page.locator("[data-testid=framework]").inner_text() == "unknown"
    page.click("[data-testid=accept]")
    page.wait_for_selector("[data-testid=accepted]")
    assert questions == ["Accept barscanary:1 although its scan found it dangerous?"]
    assert "olivia" in page.locator("[data-testid=accepted]").inner_text()
    assert Model.objects.get().is_accepted and Activity.objects.filter(verb="model.accepted", actor=owner).exists()
    assert not (tmp_path / "ran").exists()
