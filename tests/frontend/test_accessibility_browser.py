"""Tabs are ARIA tabs a keyboard can drive (roles, aria-selected, aria-controls, roving tabindex,
Left/Right/Home/End), and the workspace switcher is a real form that works with JavaScript off."""
from __future__ import annotations

import pytest

from runs import services as run_services
from workspaces import services as workspace_services
from workspaces.models import Profile

pytestmark = [pytest.mark.e2e]

STATE = """() => ({
  tabs: [...document.querySelectorAll("[role=tablist] [role=tab]")].map((t) => ({
    name: t.dataset.tab, selected: t.getAttribute("aria-selected"), tabindex: t.tabIndex,
    controls: t.getAttribute("aria-controls")})),
  focused: document.activeElement.dataset.tab || document.activeElement.getAttribute("role"),
  visible: [...document.querySelectorAll("[role=tabpanel]")].filter((p) => !p.hidden).map((p) => p.id),
  hash: location.hash,
})"""


def selected(state) -> str:
    [tab] = [t for t in state["tabs"] if t["selected"] == "true"]
    return tab["name"]


def test_the_project_tabs_are_aria_tabs_driven_by_the_keyboard(live_server, watched_page, owner, workspace):
    project = run_services.project_create(workspace=workspace, name="keys", user=owner, template="churn")
    page, problems = watched_page(owner)
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    state = page.evaluate(STATE)
    assert [t["name"] for t in state["tabs"]] == ["dashboard", "files", "settings", "properties"]
    assert selected(state) == "dashboard" and state["visible"] == ["panel-dashboard"]
    assert [t["tabindex"] for t in state["tabs"]] == [0, -1, -1, -1]  # one tab stop for the whole list
    for tab in state["tabs"]:  # each tab names its panel, and the panel names its tab back
        panel = page.locator(f"#{tab['controls']}")
        assert panel.get_attribute("role") == "tabpanel"
        assert panel.get_attribute("aria-labelledby") == page.locator(f"[role=tab][data-tab={tab['name']}]").get_attribute("id")

    # Reach the tab list from the page with Tab alone, as a keyboard user does.
    page.locator("h1").click()
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.getAttribute('role')") == "tab":
            break
    assert page.evaluate(STATE)["focused"] == "dashboard"
    for key, expected in (("ArrowRight", "files"), ("ArrowRight", "settings"), ("End", "properties"),
                          ("ArrowRight", "dashboard"), ("ArrowLeft", "properties"), ("Home", "dashboard"),
                          ("ArrowLeft", "properties")):
        page.keyboard.press(key)
        state = page.evaluate(STATE)
        assert selected(state) == expected and state["focused"] == expected, (key, state)
        assert state["visible"] == [f"panel-{expected}"] and state["hash"] == f"#{expected}", (key, state)
        assert [t["tabindex"] for t in state["tabs"]] == [0 if t["name"] == expected else -1 for t in state["tabs"]]
    # Tab leaves the tab list for the open panel (not the next tab).
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "panel-properties"
    # A link to a #tab opens it.
    page.goto(f"{live_server.url}/projects/{project.pk}/#files")
    assert selected(page.evaluate(STATE)) == "files"
    problems.assert_none()


@pytest.mark.parametrize("javascript", [False, True], ids=["javascript-off", "javascript-on"])
def test_the_workspace_switcher_is_a_form_that_works_without_javascript(live_server, watched_page, owner, workspace,
                                                                        javascript):
    workspace_services.workspace_create(name="second", user=owner)
    workspace_services.profile_set_current_workspace(user=owner, workspace=workspace)
    page, problems = watched_page(owner, java_script_enabled=javascript)
    page.goto(f"{live_server.url}/activity/")
    switcher = page.locator("form.ws-switch")
    assert switcher.locator("select").get_attribute("onchange") is None
    assert switcher.locator("select option:checked").inner_text() == "team"
    switcher.locator("select").select_option("second")
    assert page.url == f"{live_server.url}/activity/"  # choosing alone does nothing behind the user's back
    switcher.get_by_role("button", name="Switch").click()
    page.wait_for_url(f"{live_server.url}/activity/")
    assert page.locator("form.ws-switch select option:checked").inner_text() == "second"
    assert Profile.objects.get(user=owner).current_workspace.name == "second"
    problems.assert_none()


def test_without_javascript_every_tab_panel_shows_and_its_forms_work(live_server, watched_page, owner, workspace):
    project = run_services.project_create(workspace=workspace, name="plain", user=owner, template="churn")
    page, problems = watched_page(owner, java_script_enabled=False)
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    assert not page.locator(".tabs[data-tabs]").is_visible()  # a tab bar that could not switch would mislead
    for testid in ("run-form", "upload-form", "settings-form", "file-table"):
        assert page.locator(f"[data-testid={testid}]").is_visible(), testid
    page.locator("[data-testid=settings-form] input[name=time_limit_s]").fill("123")
    page.locator("[data-testid=settings-form] button[type=submit]").click()
    page.wait_for_load_state()
    project.refresh_from_db()
    assert project.time_limit_s == 123

    scripted, _ = watched_page(owner)
    scripted.goto(f"{live_server.url}/projects/{project.pk}/")
    visible = scripted.evaluate("() => [...document.querySelectorAll('[data-panel]')].filter((p) => p.offsetParent).map((p) => p.dataset.panel)")
    assert visible == ["dashboard"]
    problems.assert_none()
