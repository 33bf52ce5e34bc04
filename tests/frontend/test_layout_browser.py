"""Wide tables scroll inside their card, never the page: a runs list with 12 metric columns at
1280 px keeps the document as wide as the window, its table's container scrolls, and the run
column stays put (position: sticky) while the metrics slide under it. Under 900 px the side
navigation folds into an icon rail whose links keep their names. Real worker, Docker and Chromium."""
from __future__ import annotations

import pytest

from runs import services as run_services

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.integration]

TWELVE_METRICS = b"""from mlportal_runtime import get_logger
log = get_logger()
for i in range(12):
    log.log(f"validation metric number {i:02d}", 0.5 + i / 100)
print("logged 12 metrics")
"""

WIDTHS = """() => {
  const scroller = document.querySelector("[data-testid=runs-table]").closest(".table-scroll");
  return {document: document.documentElement.scrollWidth, window: window.innerWidth,
          scroll: scroller.scrollWidth, client: scroller.clientWidth, overflow: getComputedStyle(scroller).overflowX};
}"""


def cell_geometry(page, column: int) -> dict:
    return page.evaluate("""(column) => {
      const table = document.querySelector("[data-testid=runs-table]");
      const scroller = table.closest(".table-scroll");
      const cell = table.querySelector(`tbody tr td:nth-child(${column})`);
      const last = table.querySelector("tbody tr td:last-child");
      return {position: getComputedStyle(cell).position, left: cell.getBoundingClientRect().left,
              boxLeft: scroller.getBoundingClientRect().left, lastLeft: last.getBoundingClientRect().left,
              text: cell.textContent.trim()};
    }""", column)


def test_a_runs_list_with_twelve_metric_columns_scrolls_inside_its_card(
    live_server, watched_page, real_run, owner, workspace
):
    project = run_services.project_create(workspace=workspace, name="wide", user=owner, template="churn")
    run_services.project_file_put(project=project, path="twelve.py", content=TWELVE_METRICS, user=owner)
    run = real_run(project, owner, "twelve.py")
    page, problems = watched_page(owner, viewport={"width": 1280, "height": 800})

    for url, column in ((f"{live_server.url}/runs/", 2), (f"{live_server.url}/projects/{project.pk}/", 1)):
        page.goto(url)
        headers = page.locator("[data-testid=runs-table] thead th").all_inner_texts()
        assert sum("validation metric number" in " ".join(h.split()) for h in headers) == 12, headers
        widths = page.evaluate(WIDTHS)
        assert widths["document"] <= widths["window"], widths  # the page itself never scrolls sideways
        assert widths["overflow"] == "auto" and widths["scroll"] > widths["client"], widths  # the card does
        before = cell_geometry(page, column)
        assert before["position"] == "sticky" and before["text"] == str(run), before
        page.evaluate("() => { document.querySelector('[data-testid=runs-table]').closest('.table-scroll').scrollLeft = 600; }")
        after = cell_geometry(page, column)
        # The metrics moved left under it; the run column kept its place at the card's edge.
        assert after["lastLeft"] < before["lastLeft"] - 300, (before, after)
        assert abs(after["left"] - before["left"]) <= 1, (before, after)
        assert after["left"] >= after["boxLeft"] - 1, after
    problems.assert_none()


def test_under_900_px_the_side_navigation_folds_into_an_icon_rail(live_server, watched_page, owner, workspace):
    project = run_services.project_create(workspace=workspace, name="narrow", user=owner, template="churn")
    page, problems = watched_page(owner, viewport={"width": 800, "height": 700})
    for path in ("/", "/projects/", f"/projects/{project.pk}/", "/runs/", "/models/", "/services/", "/environments/",
                 "/activity/", "/tokens/", "/workspaces/team/"):
        assert page.goto(live_server.url + path).status == 200, path
        rail = page.evaluate("""() => ({nav: document.querySelector("nav.sidenav").getBoundingClientRect().width,
                                       label: document.querySelector("nav.sidenav .nav-label").getBoundingClientRect().width,
                                       document: document.documentElement.scrollWidth, window: window.innerWidth})""")
        assert rail["nav"] <= 56 and rail["label"] <= 1, (path, rail)
        assert rail["document"] <= rail["window"], (path, rail)
    # The folded links keep their names: a screen reader (and this test) finds them by name.
    page.get_by_role("link", name="Runs", exact=True).click()
    page.wait_for_url(f"{live_server.url}/runs/")
    assert page.locator("nav.sidenav a[aria-current=page]").get_attribute("title") == "Runs"

    wide, _ = watched_page(owner, viewport={"width": 1280, "height": 700})
    wide.goto(live_server.url + "/")
    assert wide.evaluate("() => document.querySelector('nav.sidenav').getBoundingClientRect().width") >= 180
    assert wide.locator("nav.sidenav .nav-label >> text=Runs").is_visible()
    problems.assert_none()
