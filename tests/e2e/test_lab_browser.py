"""The Azure ML Workbench lab, clicked through in a browser: a person signs in, creates the project
from the "Customer Churn Prediction" template, runs the training script in Docker and watches its
log stream in, registers model.pkl from the run's outputs, creates the manifest from the project's
files, builds the image while its build log streams, deploys it and gets "0" from the service's
Test tab. A member of another workspace sees none of it.

Everything real: the live portal, the Celery worker, the Docker engine, Debian's Chromium. A
full-page screenshot of each main page lands in test-artifacts/e2e/."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import REPO
from tests.frontend.conftest import WATCH_CSP
from workspaces import services as workspace_services

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.integration]

TEMPLATE = REPO / "runs" / "project_templates" / "churn"
TRAIN = "CATelcoCustomerChurnModelingWithoutDprep.py"
SAMPLE_REQUEST = json.loads((TEMPLATE / "sample_request.json").read_text())
SHOTS = REPO / "test-artifacts" / "e2e"
PASSWORD = "churn-lab-pw-1"
ACTIVE = ("queued", "preparing", "running")

# Generous but bounded (seconds): the environment image and the Docker layer caches are usually
# warm; a cold machine builds the environment inside the first run.
RUN_TIMEOUT = 900
BUILD_TIMEOUT = 600
DEPLOY_TIMEOUT = 240

# Records, in the page itself, every change of the run log and of the status badge with the
# browser's clock, so the test can tell what the person saw first.
WATCH_RUN = """() => {
  const log = document.getElementById("run-log");
  const status = () => document.querySelector("#run-status .badge").dataset.status;
  window.__seen = [];
  const note = () => window.__seen.push({t: performance.now(), chars: log.textContent.length, status: status(),
                                         script_line: log.textContent.includes("Loaded ")});
  note();
  new MutationObserver(note).observe(log, {childList: true, characterData: true, subtree: true});
  new MutationObserver(note).observe(document.getElementById("run-status"), {attributes: true, childList: true, subtree: true, characterData: true});
  window.__noReload = true;
}"""

WATCH_BUILD = """() => {
  const log = document.getElementById("build-log");
  const status = () => document.querySelector("#image-status .badge").dataset.status;
  window.__seen = [];
  const note = () => window.__seen.push({t: performance.now(), chars: log.textContent.length, status: status()});
  note();
  new MutationObserver(note).observe(log, {childList: true, characterData: true, subtree: true});
  new MutationObserver(note).observe(document.getElementById("image-status"), {attributes: true, childList: true, subtree: true, characterData: true});
  window.__noReload = true;
}"""


@pytest.fixture
def new_browser_context(browser, live_server):
    """new_browser_context() -> a fresh Chromium context with no session (someone who must sign in)."""
    contexts = []

    def make():
        context = browser.new_context(viewport={"width": 1300, "height": 900})
        context.set_default_timeout(30_000)
        # Every Content-Security-Policy violation in any of its pages (none may happen).
        context.csp_violations = []
        context.expose_binding("__mlportalCsp", lambda source, report: context.csp_violations.append(report))
        context.add_init_script(WATCH_CSP)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def wait_in_page(page, script: str, *, timeout: float, what: str, arg=None):
    """Waits until `script` (a JS function) returns a truthy value in the page; a timeout fails the
    test with what was awaited and a screenshot of the page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return page.wait_for_function(script, arg=arg, timeout=timeout * 1000, polling=200).json_value()
    except PlaywrightTimeout:
        shot(page, "failure")
        raise AssertionError(f"timed out after {timeout} s waiting for {what} on {page.url} "
                             f"(screenshot: test-artifacts/e2e/failure.png)") from None


def badge_is(selector: str, statuses: tuple[str, ...]) -> str:
    return (f"() => {{ const b = document.querySelector({json.dumps(selector)}); "
            f"return b && {json.dumps(list(statuses))}.includes(b.dataset.status) && b.dataset.status; }}")


def first_seen(seen: list[dict], key) -> dict | None:
    return next((s for s in seen if key(s)), None)


def generated_schema(tmp_path) -> bytes:
    """python churn_schema_gen.py, in a copy of the template, as the lab does on the person's machine."""
    folder = tmp_path / "churn-copy"
    shutil.copytree(TEMPLATE, folder)
    done = subprocess.run([sys.executable, "churn_schema_gen.py"], cwd=folder, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    return (folder / "service_schema.json").read_bytes()


def sign_in(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button:has-text('Sign in')")
    landed_on(page, "/")


def landed_on(page, path: str) -> str:
    """Waits for the browser to arrive on `path` (`*` stands for an object's id; a query string and a
    #fragment may follow), returns the URL without the fragment."""
    pattern = re.escape(path).replace(r"\*", "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    page.wait_for_url(re.compile(pattern + r"(\?[^#]*)?(#.*)?$"))
    return page.url.split("#")[0]


def go(page, section: str) -> None:
    """Follows the left navigation to a section of the portal."""
    page.click(f"nav.sidenav a:has-text('{section}')")
    page.wait_for_load_state()


def table_rows(page, testid: str) -> list[str]:
    return [" ".join(t.split()) for t in page.locator(f"[data-testid={testid}] tbody tr").all_inner_texts()]


def test_the_lab_clicked_through_in_a_browser_ends_with_the_service_predicting_0(
    docker_worker, live_server, new_browser_context, browser_page, outsider, tmp_path
):
    started = time.monotonic()
    workspace_services.user_bootstrap(username="ada", password=PASSWORD, workspace_name="churnlab")
    base = live_server.url
    page = new_browser_context().new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # Sign in through the login form: the dashboard of workspace churnlab, nothing in it yet.
    sign_in(page, base, "ada")
    assert page.locator(".blade-header h1").inner_text() == "Dashboard · churnlab"

    # New project from the "Customer Churn Prediction" template.
    go(page, "Projects")
    page.click("[data-testid=new-project]")
    page.check("[data-testid=template-churn]")
    page.fill("#id_name", "churn_prediction")
    page.click("[data-testid=new-project-form] button:has-text('Create project')")
    project_url = landed_on(page, "/projects/*/")
    assert page.locator(".blade-header h1").inner_text() == "Project churn_prediction"
    assert "from template churn" in page.locator(".blade-header").inner_text()
    page.click("button[data-tab=files]")
    files = [row.split()[0] for row in table_rows(page, "file-table")]
    for name in (TRAIN, "score.py", "churn_schema_gen.py", "requirements.txt", "data/CATelcoCustomerChurnTrainingSample.csv"):
        assert name in files

    # Run the training script on target docker and watch the log arrive while it runs.
    page.click("button[data-tab=dashboard]")
    assert page.locator("select[name=script]").input_value() == TRAIN  # the template's default script
    page.select_option("select[name=target]", "docker")
    page.click("[data-testid=run-button]")
    run_url = landed_on(page, "/runs/*/")
    page.evaluate(WATCH_RUN)
    page.click("button[data-tab=logs]")
    wait_in_page(page, badge_is("#run-status .badge", ("completed", "failed", "canceled", "lost")),
                 timeout=RUN_TIMEOUT, what="the run to end")
    # The badge turns on its own poll; the log's last lines come with the tail's next answer.
    wait_in_page(page, "() => document.getElementById('run-log').dataset.done === 'true'", timeout=15,
                 what="the end of the run log")
    seen = page.evaluate("window.__seen")
    first_line = first_seen(seen, lambda s: s["chars"] > 0)
    script_line = first_seen(seen, lambda s: s["script_line"])
    ended = first_seen(seen, lambda s: s["status"] not in ACTIVE)
    log_text = page.locator("[data-testid=run-log]").inner_text()
    assert ended["status"] == "completed", log_text[-3000:]
    assert first_line is not None and script_line is not None, log_text[-3000:]
    # The first lines reached the page while the badge still said the run was going: the log is
    # live, not dumped at the end. (The training itself takes about a second, so its own lines may
    # land with the tail's answer that follows the status change.)
    assert first_line["status"] in ACTIVE, seen
    assert first_line["t"] < ended["t"] and first_line["t"] < script_line["t"], seen
    print(f"run log: first line {(ended['t'] - first_line['t']) / 1000:.1f} s before the end, the script's first "
          f"line {(ended['t'] - script_line['t']) / 1000:+.1f} s; status at the first line: {first_line['status']}")
    assert "DTree Accuracy" in log_text and "Exported the decision tree pipeline" in log_text
    assert page.evaluate("window.__noReload") is True  # the badge turned without a reload
    wait_in_page(page, "() => document.getElementById('run-exit').textContent.trim() === '0'", timeout=10,
                 what="the exit code")
    # The rest of the page caught up without a reload too: times, image, the outputs and their register link.
    wait_in_page(page, "() => document.getElementById('run-outputs-count').textContent === '1'", timeout=10,
                 what="the outputs count")
    page.click("button[data-tab=overview]")
    assert page.locator("#run-started time").count() == 1 and page.locator("#run-ended time").count() == 1
    assert page.locator("#run-image").inner_text().startswith("mlportal-env:")
    page.click("button[data-tab=outputs]")
    live_outputs = table_rows(page, "outputs-table")
    assert len(live_outputs) == 1 and live_outputs[0].startswith("outputs/model.pkl") and "Register model" in live_outputs[0]
    page.click("button[data-tab=overview]")
    shot(page, "03-run-detail")

    # The runs list has a column per metric: DTree Accuracy with this run's value.
    go(page, "Runs")
    headers = [" ".join(h.split()) for h in page.locator("[data-testid=runs-table] thead th").all_inner_texts()]
    assert "DTree Accuracy" in " ".join(headers), headers
    rows = table_rows(page, "runs-table")
    assert len(rows) == 1 and TRAIN in rows[0] and "completed" in rows[0] and "docker" in rows[0], rows
    column = next(i for i, h in enumerate(headers) if h.startswith("DTree Accuracy"))
    dtree = float(page.locator("[data-testid=runs-table] tbody tr td").nth(column).inner_text())
    assert dtree > 0.85
    shot(page, "04-runs-list")

    # Register model.pkl from the run's Outputs.
    page.goto(run_url + "#outputs")
    outputs = table_rows(page, "outputs-table")
    assert len(outputs) == 1 and outputs[0].startswith("outputs/model.pkl"), outputs
    page.click("[data-testid=outputs-table] [data-testid=register-model]")
    landed_on(page, "/models/register/")
    assert page.locator("#id_name").input_value() == "model.pkl"
    page.click("[data-testid=register-form] button:has-text('Register')")
    landed_on(page, "/models/*/")
    assert "Registered model.pkl version 1." in page.locator(".messages").inner_text()
    assert page.locator("[data-testid=run-link]").get_attribute("href") in run_url
    shot(page, "05-model")

    # service_schema.json: generated on the person's machine, uploaded into the project.
    schema_file = tmp_path / "service_schema.json"
    schema_file.write_bytes(generated_schema(tmp_path))
    page.goto(project_url + "#files")
    page.set_input_files("[data-testid=upload-form] input[name=file]", str(schema_file))
    page.click("[data-testid=upload-form] button:has-text('Upload')")
    landed_on(page, project_url[len(base):])
    assert "1 file uploaded." in page.locator(".messages").inner_text()
    assert "service_schema.json" in [row.split()[0] for row in table_rows(page, "file-table")]
    page.click("button[data-tab=dashboard]")
    shot(page, "02-project")

    # The manifest: model.pkl v1 + score.py, service_schema.json and requirements.txt of the project.
    go(page, "Models")
    page.click("[data-testid=model-table] a:has-text('model.pkl')")
    page.click("a:has-text('Create manifest')")
    landed_on(page, "/manifests/new/")
    page.fill("#id_name", "churnpred")
    assert page.locator("#id_models option:checked").all_inner_texts() == ["model.pkl v1 (model.pkl)"]
    page.check("input[name=source][value=project]")
    page.select_option("#id_project", label="churn_prediction")
    assert page.locator("#id_score_path").input_value() == "score.py"
    assert page.locator("#id_schema_path").input_value() == "service_schema.json"
    page.fill("#id_requirements_path", "requirements.txt")
    page.click("[data-testid=manifest-form] button:has-text('Create')")
    landed_on(page, "/manifests/*/")
    assert page.locator(".blade-header h1").inner_text() == "Manifest churnpred version 1"
    requirements = page.locator("dt:has-text('Requirements') + dd").inner_text()
    assert "scikit-learn" in requirements and "pandas" in requirements
    shot(page, "06-manifest")

    # The image: its build log streams into the page while it builds.
    page.click("[data-testid=build-form] button:has-text('Create image')")
    image_url = landed_on(page, "/images/*/")
    page.evaluate(WATCH_BUILD)
    page.click("button[data-tab=log]")
    wait_in_page(page, badge_is("#image-status .badge", ("succeeded", "failed")), timeout=BUILD_TIMEOUT,
                 what="the image build to end")
    wait_in_page(page, "() => document.getElementById('build-log').dataset.done === 'true'", timeout=15,
                 what="the end of the build log")
    seen = page.evaluate("window.__seen")
    build_log = page.locator("[data-testid=build-log]").inner_text()
    assert page.locator("#image-status .badge").get_attribute("data-status") == "succeeded", build_log[-3000:]
    first_line = first_seen(seen, lambda s: s["chars"] > 0)
    assert first_line is not None and first_line["status"] not in ("succeeded", "failed"), seen
    assert page.evaluate("window.__noReload") is True
    wait_in_page(page, "() => document.getElementById('image-id').textContent.trim().startsWith('sha256:')",
                 timeout=10, what="the image id")
    page.click("button[data-tab=overview]")
    assert page.locator("[data-testid=image-tag]").inner_text() == "mlportal/churnlab/churnpred:1"
    assert page.locator("#image-finished time").count() == 1  # filled in without a reload
    shot(page, "07-image")

    # Deploy the image as service churnpred.
    go(page, "Services")
    page.click("a:has-text('Create service')")
    landed_on(page, "/services/new/")
    form = page.locator("[data-testid=image-form]")
    form.locator("#id_name").fill("churnpred")
    assert form.locator("select[name=image] option:checked").inner_text() == "churnpred v1 (mlportal/churnlab/churnpred:1)"
    form.locator("button:has-text('Deploy')").click()
    service_url = landed_on(page, "/services/*/")
    wait_in_page(page, badge_is("[data-testid=service-status] .badge", ("healthy", "failed")), timeout=DEPLOY_TIMEOUT,
                 what="the service to become healthy")
    assert page.locator("[data-testid=service-status] .badge").get_attribute("data-status") == "healthy", \
        page.locator("[data-testid=service-error]").inner_text()

    # The Test tab holds the schema's example (the lab's record) and the service answers "0".
    page.click("button[data-tab=test]")
    assert json.loads(page.locator("[data-testid=test-body]").input_value()) == SAMPLE_REQUEST
    page.click("[data-testid=test-send]")
    wait_in_page(page, "() => /\\b\\d{3}\\b/.test(document.querySelector('[data-testid=test-status]').textContent)",
                 timeout=60, what="the test answer")
    assert "200" in page.locator("[data-testid=test-status]").inner_text()
    assert page.locator("[data-testid=test-response]").inner_text().strip() == '"0"'
    shot(page, "08-service-test")

    # Everything is in its list.
    expectations = [("Models", "model-table", "model.pkl"), ("Manifests", "manifest-table", "churnpred"),
                    ("Images", "image-table", "mlportal/churnlab/churnpred:1"), ("Services", "service-table", "churnpred")]
    for section, table, name in expectations:
        go(page, section)
        rows = table_rows(page, table)
        assert len(rows) == 1 and name in rows[0], (section, rows)
    assert "healthy" in table_rows(page, "service-table")[0]
    go(page, "Dashboard")
    tiles = " ".join(page.locator(".tiles").inner_text().split())
    assert "churnpred" in page.locator(".blade:has-text('Services')").inner_text()
    shot(page, "01-dashboard")
    assert dialogs == []
    assert page.context.csp_violations == []  # the whole lab ran under the policy

    # A member of another workspace sees none of it: empty lists, and 404 for every page of it.
    other = browser_page(outsider)
    for section, table in (("projects", "project-table"), ("runs", "runs-table"), ("models", "model-table"),
                           ("manifests", "manifest-table"), ("images", "image-table"), ("services", "service-table")):
        other.goto(f"{base}/{section}/")
        rows = table_rows(other, table)
        assert len(rows) == 1 and "No " in rows[0], (section, rows)
    other.goto(f"{base}/")
    assert "No runs yet." in other.locator("main").inner_text() and "No services yet." in other.locator("main").inner_text()
    for url in (service_url, image_url, run_url, project_url):
        response = other.goto(url)
        assert response.status == 404, url
    print(f"tiles: {tiles}; the lab took {time.monotonic() - started:.0f} s in the browser")
