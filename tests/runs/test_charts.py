"""Charts never drop data: every series is downsampled on the server to about 1,000 points keeping
first, last, minimum and maximum; a step range comes back at full resolution; all series of a run
appear (the old page read at most 50,000 points over all series, so a 100,000-point series stopped
at step 49,999 and with ten series the last ones alphabetically never appeared)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from runs import selectors, services, worker
from runs.metrics import run_record_metrics
from runs.downsample import downsample
from runs.models import RunMetricSummary


def test_downsampling_keeps_first_last_min_and_max_within_the_budget():
    steps = list(range(100_000))
    values = [math.sin(i / 500) for i in steps]
    values[31_337], values[77_777] = -5.0, 9.0
    kept_steps, kept_values = downsample(steps, values, 1000)
    assert len(kept_steps) <= 1000 and kept_steps == sorted(kept_steps)
    assert kept_steps[0] == 0 and kept_steps[-1] == 99_999
    assert (31_337, -5.0) in zip(kept_steps, kept_values) and (77_777, 9.0) in zip(kept_steps, kept_values)
    assert downsample([1, 2], [3.0, 4.0], 1000) == ([1, 2], [3.0, 4.0])


def _run_with_series(owner, blank, series: dict[str, int]):
    run = services.run_submit(project=blank, script="train.py", user=owner)
    worker.run_claim(run_id=run.id, worker="tests")
    for name, count in series.items():
        points = [{"name": name, "value": float(i % 1000) / 7, "step": i, "time": None} for i in range(count)]
        for start in range(0, count, 20_000):
            run_record_metrics(run_id=run.id, workspace_id=run.workspace_id, points=points[start:start + 20_000])
    return run


@pytest.mark.django_db
def test_a_100k_point_series_reaches_its_last_step_and_ten_series_all_appear(owner_api, owner, blank):
    run = _run_with_series(owner, blank, {"loss": 100_000, **{f"s{i:02d}": 6_000 for i in range(9)}})
    res = owner_api.get(f"/api/v1/runs/{run.id}/series/", HTTP_ACCEPT_ENCODING="gzip")
    assert res.status_code == 200 and res["Content-Encoding"] == "gzip"
    import gzip
    import json

    series = json.loads(gzip.decompress(res.content))["series"]
    assert sorted(series) == ["loss", *[f"s{i:02d}" for i in range(9)]]
    loss = series["loss"]
    assert loss["steps"][0] == 0 and loss["steps"][-1] == 99_999 and loss["points"] == 100_000 and loss["sampled"]
    assert len(loss["steps"]) <= 1000 and max(loss["values"]) == pytest.approx(999 / 7) and min(loss["values"]) == 0
    assert all(s["steps"][-1] == 5_999 for name, s in series.items() if name != "loss")


@pytest.mark.django_db
def test_a_step_range_comes_back_at_full_resolution(owner_api, owner, blank):
    run = _run_with_series(owner, blank, {"loss": 100_000})
    body = owner_api.get(f"/api/v1/runs/{run.id}/series/", {"min_step": 50_000, "max_step": 50_499, "names": "loss"}).json()
    loss = body["series"]["loss"]
    assert loss["steps"] == list(range(50_000, 50_500)) and not loss["sampled"] and loss["points"] == 500
    wide = owner_api.get(f"/api/v1/runs/{run.id}/series/", {"min_step": 10_000, "max_step": 60_000}).json()["series"]["loss"]
    assert wide["sampled"] and wide["steps"][0] == 10_000 and wide["steps"][-1] == 60_000
    res = owner_api.get(f"/api/v1/runs/{run.id}/series/", {"min_step": "x"})
    assert res.status_code == 400 and res.json()["error"]["fields"]["min_step"]
    assert owner_api.get(f"/api/v1/runs/{run.id}/series/", {"points": 10**6}).status_code == 400


@pytest.mark.django_db
def test_the_worker_keeps_the_downsampled_series_until_more_points_arrive(owner, blank):
    run = _run_with_series(owner, blank, {"loss": 5_000})
    worker.prepare_charts(run.id)
    summary = RunMetricSummary.objects.get(run=run, name="loss")
    assert summary.chart_count == 5_000 and summary.chart["steps"][-1] == 4_999
    run_record_metrics(run_id=run.id, workspace_id=run.workspace_id,
                                points=[{"name": "loss", "value": 1.0, "step": 5_000, "time": None}])
    assert selectors.chart_series(run)["loss"]["steps"][-1] == 5_000


@pytest.mark.django_db
def test_a_finished_runs_whole_answer_is_kept_gzipped_until_more_points_arrive(owner_api, owner, blank):
    import gzip
    import json

    from runs.models import RunChartCache

    run = _run_with_series(owner, blank, {"loss": 3_000, "acc": 20})
    live = owner_api.get(f"/api/v1/runs/{run.id}/series/").json()  # active: computed, nothing kept
    assert not RunChartCache.objects.filter(run=run).exists()
    worker.prepare_charts(run.id)  # the worker's end-of-run step makes it
    kept = RunChartCache.objects.get(run=run)
    worker.run_finish(run_id=run.id, status="completed", exit_code=0)
    res = owner_api.get(f"/api/v1/runs/{run.id}/series/", HTTP_ACCEPT_ENCODING="gzip")
    assert kept.key == "2:3020" and json.loads(gzip.decompress(kept.body)) == live
    assert res["Content-Encoding"] == "gzip" and res.content == bytes(kept.body)
    assert owner_api.get(f"/api/v1/runs/{run.id}/series/", HTTP_ACCEPT_ENCODING="gzip").content == bytes(kept.body)
    assert owner_api.get(f"/api/v1/runs/{run.id}/series/").json() == live  # unpacked for a client without gzip
    # An MLflow client may log after the end: the kept answer is stale then, and made again.
    run_record_metrics(run_id=run.id, workspace_id=run.workspace_id,
                       points=[{"name": "loss", "value": 2.0, "step": 3_000, "time": None}])
    again = owner_api.get(f"/api/v1/runs/{run.id}/series/").json()["series"]["loss"]
    assert again["steps"][-1] == 3_000 and RunChartCache.objects.get(run=run).key == "2:3021"


@pytest.mark.django_db
def test_the_run_page_of_ten_long_series_weighs_under_200_kb_with_its_scripts_and_stylesheet(page_client, owner, blank):
    """Issue 18: the page of a run with 10 series weighed 1.6 MB (and stopped at step 49,999). What
    Chromium gets for the metrics tab: the page, its series answer (gzipped) and each static file
    it loads, gzipped as the gateway sends them. Each series is downsampled to about 1,000 points
    whatever its length, so 5,000 points a series weigh what 100,000 do."""
    import gzip
    import json
    import re

    from django.contrib.staticfiles import finders

    run = services.run_submit(project=blank, script="train.py", user=owner)
    worker.run_claim(run_id=run.id, worker="tests")
    for s in range(10):
        run_record_metrics(run_id=run.id, workspace_id=run.workspace_id, points=[
            {"name": f"series_{s:02d}", "value": math.exp(-step / 5_000 * (s + 1)) + 0.01 * math.sin(step),
             "step": step, "time": None} for step in range(5_000)])
    worker.prepare_charts(run.id)
    worker.run_finish(run_id=run.id, status="completed", exit_code=0)
    client = page_client(owner)
    response = client.get(f"/runs/{run.id}/", HTTP_ACCEPT_ENCODING="gzip")
    assert response["Content-Encoding"] == "gzip"
    page = gzip.decompress(response.content).decode()
    # The finished run's page carries its series (no second request): what the chart draws first.
    block = re.search(r'<script type="application/json" id="run-series-data">(.*?)</script>', page, re.S).group(1)
    series = json.loads(block)["series"]
    assert len(series) == 10 and all(s["steps"][-1] == 4_999 for s in series.values())
    assert 'data-first="run-series-data"' in page and 'rel="preload"' not in page
    static = re.findall(r'(?:href|src)="/static/([^"]+)"', page)
    assert {"css/portal.css", "js/portal.js", "js/metric_chart.js"} <= set(static)
    sizes = {name: len(gzip.compress(Path(finders.find(name)).read_bytes(), 9)) for name in static}
    total = len(response.content) + sum(sizes.values())
    assert total < 200 * 1024, (len(response.content), sizes)
    plain = client.get(f"/runs/{run.id}/")  # a client without gzip gets it unpacked
    assert not plain.has_header("Content-Encoding") and block in plain.content.decode()


@pytest.mark.django_db
def test_a_series_name_cannot_end_the_pages_data_block(page_client, owner, blank):
    import json
    import re

    name = "</script><script>alert(1)</script><!-- & -->"
    run = _run_with_series(owner, blank, {name: 30})
    worker.prepare_charts(run.id)
    worker.run_finish(run_id=run.id, status="completed", exit_code=0)
    page = page_client(owner).get(f"/runs/{run.id}/").content.decode()
    block = re.search(r'<script type="application/json" id="run-series-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in block and ">" not in block and "&" not in block
    assert list(json.loads(block)["series"]) == [name]


@pytest.mark.django_db
def test_a_page_whose_series_answer_is_too_big_to_carry_preloads_it_instead(page_client, owner, blank, monkeypatch):
    from runs import chart_cache

    run = _run_with_series(owner, blank, {"loss": 3_000, "acc": 3_000})
    worker.prepare_charts(run.id)
    worker.run_finish(run_id=run.id, status="completed", exit_code=0)
    kept = len(chart_cache.whole_series_gzip(run))
    monkeypatch.setattr(chart_cache, "PAGE_DATA_MAX_GZIP_BYTES", kept - 1)
    page = page_client(owner).get(f"/runs/{run.id}/").content.decode()
    assert f'<link rel="preload" href="/api/v1/runs/{run.pk}/series/"' in page and "run-series-data" not in page
    monkeypatch.setattr(chart_cache, "PAGE_DATA_MAX_GZIP_BYTES", kept)
    assert "run-series-data" in page_client(owner).get(f"/runs/{run.id}/").content.decode()


@pytest.mark.django_db
def test_an_active_runs_page_preloads_its_series_instead(page_client, owner, blank):
    run = _run_with_series(owner, blank, {"loss": 30})
    page = page_client(owner).get(f"/runs/{run.id}/").content.decode()
    assert f'<link rel="preload" href="/api/v1/runs/{run.pk}/series/"' in page and "run-series-data" not in page


@pytest.mark.django_db
def test_outsiders_get_404_for_a_runs_series(outsider_api, owner, blank):
    run = _run_with_series(owner, blank, {"loss": 10})
    assert outsider_api.get(f"/api/v1/runs/{run.id}/series/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_the_metrics_tab_draws_every_series_to_the_last_step_and_zooms(live_server, browser_page, owner, workspace):
    project = services.project_create(workspace=workspace, name="charts", user=owner)
    services.project_file_put(project=project, path="train.py", content=b"print(1)\n", user=owner)
    run = _run_with_series(owner, project, {"loss": 100_000, **{f"s{i:02d}": 6_000 for i in range(9)}})
    worker.run_finish(run_id=run.id, status="completed", exit_code=0)
    page = browser_page(owner)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    fetched = []
    page.on("request", lambda r: fetched.append(r.url) if "/series/" in r.url else None)
    page.goto(f"{live_server.url}/runs/{run.id}/#metrics")
    chart = page.locator("[data-testid=metric-chart]")
    page.wait_for_function("() => document.querySelector('[data-testid=metric-chart]').dataset.state === 'drawn' && "
                           "document.querySelector('[data-testid=metric-chart]').dataset.series === '10'")
    assert chart.get_attribute("data-max-step") == "99999"
    assert chart.get_attribute("data-from") == "page" and fetched == []  # drawn from the page's own data block
    assert page.locator("[data-testid=chart-legend] label").count() == 10
    pixels = "() => document.querySelector('[data-testid=chart-canvas]').toDataURL()"
    linear = page.evaluate(pixels)
    page.check("[data-testid=chart-log]")
    logged = page.evaluate(pixels)
    page.locator("[data-testid=chart-smoothing]").fill("0.6")
    smoothed = page.evaluate(pixels)
    assert len({linear, logged, smoothed}) == 3  # each control redraws the lines differently
    box = page.locator("[data-testid=chart-canvas]").bounding_box()
    page.evaluate("document.querySelector('[data-testid=metric-chart]').dataset.state = ''")
    # About 0.6 % of the steps: some 600 points of "loss", fewer than the 1,000 a series is cut to.
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5 + 8, box["y"] + 100)
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('[data-testid=chart-reset]').hidden === false")
    page.wait_for_function("() => document.querySelector('[data-testid=metric-chart]').dataset.state === 'drawn'")
    assert "steps " in chart.inner_text() and int(chart.get_attribute("data-max-step")) < 99_999
    assert "every point shown" in chart.inner_text()  # the range came back at full resolution
    assert chart.get_attribute("data-from") == "fetch" and len(fetched) == 1 and "min_step=" in fetched[0]
    page.click("[data-testid=chart-reset]")
    page.wait_for_function("() => document.querySelector('[data-testid=metric-chart]').dataset.maxStep === '99999'")
    assert len(fetched) == 2 and "min_step" not in fetched[1]
    assert errors == []


@pytest.mark.django_db
def test_compare_shows_params_side_by_side_with_differences_marked(page_client, owner_api, owner, blank, finished_run):
    a = finished_run(blank, owner, metrics={"acc": 0.8, "loss": [(0, 1.0), (1, 0.5)]})
    b = finished_run(blank, owner, metrics={"acc": 0.9, "loss": [(0, 1.0), (1, 0.4)]})
    services.run_add_params(run=a, params={"max_depth": 4, "criterion": "gini"}, user=owner)
    services.run_add_params(run=b, params={"max_depth": 8, "criterion": "gini"}, user=owner)
    body = owner_api.get("/api/v1/runs/compare/", {"ids": f"{a.id},{b.id}"}).json()
    assert {"name": "max_depth", "values": ["4", "8"], "differs": True} in body["params"]
    assert {"name": "criterion", "values": ["gini", "gini"], "differs": False} in body["params"]
    assert body["parallel"]["params"] == ["criterion", "max_depth"] and "acc" in body["parallel"]["metrics"]
    page = page_client(owner).get(f"/runs/compare/?ids={a.id}&ids={b.id}").content.decode()
    assert '<tr class="diff"><th>max_depth <span class="badge"' in page and "<tr><th>criterion</th>" in page
    assert 'data-module="parallel-coordinates"' in page and 'data-module="metric-chart"' in page


@pytest.mark.django_db(transaction=True)
def test_compare_overlays_the_runs_series_and_draws_params_against_a_metric(live_server, browser_page, owner, workspace):
    project = services.project_create(workspace=workspace, name="cmp", user=owner)
    services.project_file_put(project=project, path="train.py", content=b"print(1)\n", user=owner)
    runs = []
    for depth in (3, 6, 9):
        run = _run_with_series(owner, project, {"loss": 2_000})
        run_record_metrics(run_id=run.id, workspace_id=run.workspace_id,
                                    points=[{"name": "acc", "value": depth / 10, "step": None, "time": None}])
        services.run_add_params(run=run, params={"max_depth": depth, "criterion": "gini"}, user=owner)
        worker.run_finish(run_id=run.id, status="completed", exit_code=0)
        runs.append(run)
    page = browser_page(owner)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server.url}/runs/compare/?" + "&".join(f"ids={r.id}" for r in runs))
    page.wait_for_function("() => document.querySelector('[data-testid=compare-chart]').dataset.state === 'drawn'")
    assert page.locator("[data-testid=compare-chart]").get_attribute("data-series") == "3"
    assert page.locator("[data-testid=compare-chart] [data-testid=chart-legend] label").first.inner_text().startswith(f" {runs[0]}")
    assert page.locator("[data-testid=parallel-chart]").get_attribute("data-lines") == "3"
    assert page.locator("[data-testid=parallel-chart] svg path").count() == 3
    assert page.locator("[data-testid=parallel-chart] svg text", has_text="max_depth").count() == 1
    assert errors == []
