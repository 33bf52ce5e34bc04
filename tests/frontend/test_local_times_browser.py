"""Times on the pages are the reader's own: the server writes UTC into <time datetime> (and on
hover), and portal.js shows it in the browser's time zone and locale. The same moment read from
Kolkata (UTC+5:30) and from New York (UTC-5 in March) shows two local clocks, never UTC, with the UTC
value kept in the title. Real Chromium, with its time zone set per browser context."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from workspaces.models import Workspace

pytestmark = [pytest.mark.e2e]

MOMENT = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def _shown(page, url: str, name: str) -> dict:
    assert page.goto(url).status == 200
    row = page.locator("tr", has=page.get_by_role("link", name=name, exact=True))
    time = row.locator("time")
    time.wait_for()
    return {"text": time.inner_text().strip(), "title": time.get_attribute("title"),
            "datetime": time.get_attribute("datetime")}


@pytest.mark.parametrize(("zone", "local"), [("Asia/Kolkata", "01/03/2026, 17:30:00"),
                                             ("America/New_York", "01/03/2026, 07:00:00")])
def test_a_time_on_a_page_is_shown_in_the_readers_zone_with_utc_on_hover(live_server, watched_page, owner, workspace,
                                                                          zone, local):
    Workspace.objects.filter(pk=workspace.pk).update(created_at=MOMENT)
    page, problems = watched_page(owner, timezone_id=zone, locale="en-GB")

    shown = _shown(page, live_server.url + "/workspaces/", workspace.name)

    assert shown["text"] == local, shown  # not the server's "2026-03-01 12:00 UTC"
    assert shown["title"] == "2026-03-01 12:00:00 UTC" and shown["datetime"].startswith("2026-03-01T12:00:00")
    problems.assert_none()
