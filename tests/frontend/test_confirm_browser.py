"""A form marked data-confirm asks first (portal.js, no inline handler): dismissing the question
sends nothing, accepting it deletes."""
from __future__ import annotations

import io

import pytest

from registry.models import Model

pytestmark = [pytest.mark.e2e]


def test_deleting_a_model_version_asks_first(live_server, watched_page, owner, owner_api, workspace):
    upload = io.BytesIO(b"not really a pickle")
    upload.name = "model.pkl"
    created = owner_api.post("/api/v1/models/", {"name": "model.pkl", "file": upload}, format="multipart")
    assert created.status_code == 201, created.content
    page, problems = watched_page(owner)
    questions = []
    answer = {"accept": False}
    page.on("dialog", lambda d: (questions.append(d.message), d.accept() if answer["accept"] else d.dismiss()))
    page.goto(f"{live_server.url}/models/{created.json()['id']}/")

    page.click("button:has-text('Delete version')")
    page.wait_for_timeout(500)
    assert questions == ["Delete model.pkl:1?"] and Model.objects.filter(pk=created.json()["id"]).exists()

    answer["accept"] = True
    page.click("button:has-text('Delete version')")
    page.wait_for_url(f"{live_server.url}/models/")
    assert len(questions) == 2 and not Model.objects.filter(pk=created.json()["id"]).exists()
    problems.assert_none()
