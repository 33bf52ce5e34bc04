"""Params, tags and notes of a run: from the runtime's stdout lines through the worker's sink, from
the API and from the run page; MLflow's rules (a param keeps its value; value size limits) answered
with a message that says what to change; readers and outsiders cannot change anything."""
from __future__ import annotations

import io

import pytest
from django.urls import reverse

from mlportal_runtime import PARAM_PREFIX, TAG_PREFIX, parse_line
from mlportal_runtime.logger import DuplicateParam, RunLogger
from runs import services, worker
from runs.models import RunParam, RunTag
from runs.selectors import log_since

pytestmark = pytest.mark.django_db


def test_the_runtime_prints_param_and_tag_lines_the_worker_can_read():
    stream = io.StringIO()
    logger = RunLogger(stream)
    logger.log_params({"max_depth": 4, "criterion": "gini"})
    logger.log_param("max_depth", "4")  # the same value again: nothing new
    logger.set_tags({"team": "churn"})
    logger.log_metrics({"acc": 0.9, "f1": 0.8}, step=3)
    parsed = [parse_line(line) for line in stream.getvalue().splitlines()]
    assert parsed[:3] == [("param", {"name": "max_depth", "value": "4"}), ("param", {"name": "criterion", "value": "gini"}),
                          ("tag", {"key": "team", "value": "churn"})]
    assert parsed[3][0] == "metrics" and len(parsed) == 4  # log_metrics: one line for the step
    assert [(p["name"], p["value"], p["step"]) for p in parsed[3][1]] == [("acc", 0.9, 3), ("f1", 0.8, 3)]


def test_a_metrics_line_is_all_or_nothing_and_feeds_the_sink(owner, blank):
    from mlportal_runtime import METRICS_PREFIX
    from runs.models import Metric

    assert parse_line(METRICS_PREFIX + '{"metrics": {"a": 1, "b": [2]}, "step": 1, "time": 1.0}') is None
    assert parse_line(METRICS_PREFIX + '{"metrics": {"a": 1, "": 2}, "step": 1, "time": 1.0}') is None
    assert parse_line(METRICS_PREFIX + '{"metrics": {}, "step": 1}') is None
    assert parse_line(METRICS_PREFIX + '{"metrics": {"a": 1}, "step": 1.5}') is None
    stream = io.StringIO()
    RunLogger(stream).log_metrics({f"m{i}": i for i in range(150)}, step=2)
    assert [line.startswith(METRICS_PREFIX) for line in stream.getvalue().splitlines()] == [True, True]  # 100 a line
    run = services.run_submit(project=blank, script="train.py", user=owner)
    claimed = worker.run_claim(run_id=run.id, worker="tests")
    sink = worker.RunSink(claimed)
    for line in stream.getvalue().splitlines():
        sink.output(line)
    sink.flush()
    assert Metric.objects.filter(run=claimed, step=2).count() == 150 and sink.metric_count == 150


def test_the_runtime_refuses_a_changed_param_and_an_oversized_value():
    logger = RunLogger(io.StringIO())
    logger.log_param("lr", 0.1)
    with pytest.raises(DuplicateParam, match="already logged in this run with value '0.1'"):
        logger.log_param("lr", 0.2)
    with pytest.raises(ValueError, match="6001 characters; the limit is 6000"):
        logger.log_param("blob", "x" * 6001)
    with pytest.raises(ValueError, match="limit is 8000"):
        logger.set_tag("t", "x" * 8001)


def test_oversized_or_malformed_lines_stay_plain_output():
    assert parse_line(PARAM_PREFIX + '{"name": "a", "value": "' + "x" * 6001 + '"}') is None
    assert parse_line(PARAM_PREFIX + '{"name": "a", "value": 4}') is None
    assert parse_line(TAG_PREFIX + '{"key": "", "value": "v"}') is None
    assert parse_line("##mlportal[other] {}") is None


@pytest.fixture
def claimed(owner, blank):
    run = services.run_submit(project=blank, script="train.py", user=owner)
    return worker.run_claim(run_id=run.id, worker="tests:1")


def test_the_sink_stores_params_and_tags_and_logs_a_refused_param(claimed):
    sink = worker.RunSink(claimed)
    sink.output(PARAM_PREFIX + '{"name": "max_depth", "value": "4"}')
    sink.output(TAG_PREFIX + '{"key": "team", "value": "churn"}')
    sink.output("plain")
    sink.flush()
    sink.output(PARAM_PREFIX + '{"name": "max_depth", "value": "5"}')  # e.g. a second process of the script
    sink.output(TAG_PREFIX + '{"key": "team", "value": "fraud"}')
    sink.flush()
    assert dict(RunParam.objects.filter(run=claimed).values_list("name", "value")) == {"max_depth": "4"}
    assert dict(RunTag.objects.filter(run=claimed).values_list("key", "value")) == {"team": "fraud"}
    text, _ = log_since(claimed, 0)
    assert "plain\n" in text and "param not recorded: Param 'max_depth' was already logged" in text and "'5'" in text


def test_the_api_logs_params_and_refuses_a_changed_one_storing_nothing_of_that_call(contributor_api, owner, blank, finished_run):
    run = finished_run(blank, owner)
    res = contributor_api.post(f"/api/v1/runs/{run.id}/params/", {"params": {"max_depth": 4, "lr": 0.1}}, format="json")
    assert res.status_code == 200 and res.json()["params"] == {"lr": "0.1", "max_depth": "4"}
    res = contributor_api.post(f"/api/v1/runs/{run.id}/params/", {"params": {"seed": 1, "lr": 0.2}}, format="json")
    assert res.status_code == 400
    error = res.json()["error"]
    assert error["code"] == "param_changed" and "'lr'" in error["message"] and "'0.1'" in error["message"]
    assert not RunParam.objects.filter(run=run, name="seed").exists()
    res = contributor_api.post(f"/api/v1/runs/{run.id}/params/", {"params": {"big": "x" * 6001}}, format="json")
    assert res.status_code == 400 and "limit is 6000" in res.json()["error"]["message"]
    res = contributor_api.post(f"/api/v1/runs/{run.id}/params/", {"params": {"nested": {"a": 1}}}, format="json")
    assert res.status_code == 400 and "number or text" in res.json()["error"]["message"]


def test_tags_and_note_are_editable_after_the_run_through_the_api(contributor_api, reader_api, outsider_api, owner, blank, finished_run):
    run = finished_run(blank, owner)
    res = contributor_api.patch(f"/api/v1/runs/{run.id}/", {"tags": {"team": "churn", "stage": "x"}, "note": "depth 4 wins"}, format="json")
    assert res.status_code == 200, res.json()
    assert res.json()["tags"] == {"stage": "x", "team": "churn"} and res.json()["note"] == "depth 4 wins"
    res = contributor_api.patch(f"/api/v1/runs/{run.id}/", {"delete_tags": ["stage"]}, format="json")
    assert res.json()["tags"] == {"team": "churn"} and res.json()["note"] == "depth 4 wins"
    assert contributor_api.patch(f"/api/v1/runs/{run.id}/", {"status": "completed"}, format="json").status_code == 400
    assert contributor_api.patch(f"/api/v1/runs/{run.id}/", {"tags": {"t": "x" * 8001}}, format="json").status_code == 400
    assert reader_api.patch(f"/api/v1/runs/{run.id}/", {"note": "mine"}, format="json").status_code == 403
    assert reader_api.post(f"/api/v1/runs/{run.id}/params/", {"params": {"a": 1}}, format="json").status_code == 403
    assert outsider_api.patch(f"/api/v1/runs/{run.id}/", {"note": "mine"}, format="json").status_code == 404
    assert outsider_api.get(f"/api/v1/runs/{run.id}/").status_code == 404
    run.refresh_from_db()
    assert run.note == "depth 4 wins"


def test_the_run_page_shows_params_and_edits_tags_and_note(page_client, owner, reader, blank, finished_run):
    run = finished_run(blank, owner)
    services.run_add_params(run=run, params={"max_depth": 4}, user=owner)
    client = page_client(owner)
    url = reverse("run-annotate", args=[run.pk])
    assert client.post(url, {"tag_key": "team", "tag_value": "churn"}).status_code == 302
    assert client.post(url, {"note": "first try\r\nwith depth 4"}).status_code == 302
    page = client.get(run.get_absolute_url()).content.decode()
    assert "max_depth" in page and "<code>4</code>" in page and "churn" in page and "first try\nwith depth 4" in page
    client.post(url, {"delete_tag": "team"})
    assert not RunTag.objects.filter(run=run).exists()
    client.post(url, {"tag_key": "t", "tag_value": "x" * 8001})
    assert "limit is 8000" in client.get(run.get_absolute_url()).content.decode()
    assert page_client(reader).post(url, {"note": "reader"}).status_code == 403
    run.refresh_from_db()
    assert run.note == "first try\nwith depth 4"
