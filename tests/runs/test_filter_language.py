"""The runs filter language: the tokenizer and grammar (pure), and what the API, the page and the
CLI answer for it: the runs that match, and for a filter that cannot be read, an error naming the
token and what was expected there."""
from __future__ import annotations

import pytest
from django.urls import reverse

from runs import filtering, services
from runs.filtering import Clause, FilterError

EXAMPLE = 'metrics."DTree Accuracy" > 0.9 and params.max_depth = "4" and tags.team = "churn"'


def test_it_reads_the_mlflow_style_example():
    assert filtering.parse(EXAMPLE) == [
        Clause("metrics", "DTree Accuracy", ">", 0.9),
        Clause("params", "max_depth", "=", "4"),
        Clause("tags", "team", "=", "churn"),
    ]


def test_it_reads_every_comparator_and_quote_kind():
    clauses = filtering.parse("metric.`a b` >= -1e-3 AND param.x != 'y' and tags.t LIKE \"ch%\" and tags.u ILIKE 'A_'"
                              " and params.p IN ('1', \"2\") and params.q NOT IN ('3') and attributes.status = 'completed'"
                              " and attr.number <= 5 and metrics.m == 2 and metrics.n <> 3")
    assert [(c.entity, c.key, c.op, c.value) for c in clauses] == [
        ("metrics", "a b", ">=", -0.001), ("params", "x", "!=", "y"), ("tags", "t", "LIKE", "ch%"),
        ("tags", "u", "ILIKE", "A_"), ("params", "p", "IN", ("1", "2")), ("params", "q", "NOT IN", ("3",)),
        ("attributes", "status", "=", "completed"), ("attributes", "number", "<=", 5.0), ("metrics", "m", "=", 2.0),
        ("metrics", "n", "!=", 3.0)]


def test_an_unquoted_number_for_a_param_means_its_text():
    assert filtering.parse("params.max_depth = 4") == [Clause("params", "max_depth", "=", "4")]


def test_an_empty_filter_has_no_clauses():
    assert filtering.parse("  ") == []


@pytest.mark.parametrize("text, position, token, says", [
    ('metrics.acc >> 0.9', 14, ">", "expected a number"),
    ('metrics.acc ~ 0.9', 13, "~", "'~' is not a name"),
    ('metric.acc 0.9', 12, "0.9", "expected a comparison"),
    ('foo.acc > 1', 1, "foo", "metrics.<name>"),
    ('metrics acc > 1', 9, "acc", "expected '.'"),
    ('params.x = "4', 12, '"4', "never closed"),
    ('params.x > "4"', 10, ">", "compares as text"),
    ('metrics.x LIKE "a%"', 11, "LIKE", "compares as numbers"),
    ('metrics.x > "high"', 13, '"high"', "expected a number"),
    ('metrics.x > 1 or metrics.y > 2', 15, "or", "'OR' is not supported"),
    ('metrics.x > 1 metrics.y > 2', 15, "metrics", "expected AND"),
    ('metrics.x >', 12, "", "the end of the filter"),
    ('attributes.colour = "red"', 12, "colour", "no attribute 'colour'"),
    ('params.p IN "1"', 13, '"1"', "'(' and a list"),
])
def test_an_unreadable_filter_names_the_token_and_what_was_expected(text, position, token, says):
    with pytest.raises(FilterError) as info:
        filtering.parse(text)
    assert info.value.position == position - 1 and info.value.token == token
    assert f"character {position}" in info.value.message and says in info.value.message


def test_like_patterns_become_anchored_regexes():
    assert filtering.like_to_regex("ch%_x.") == r"^ch.*.x\.$"


@pytest.fixture
def three_runs(owner, workspace, blank, finished_run):
    runs = []
    for depth, team, acc in (("4", "churn", 0.93), ("8", "churn", 0.95), ("4", "fraud", 0.97)):
        run = finished_run(blank, owner, metrics={"DTree Accuracy": acc})
        services.run_add_params(run=run, params={"max_depth": depth, "criterion": "gini"}, user=owner)
        services.run_annotate(run=run, user=owner, tags={"team": team})
        runs.append(run)
    return runs


@pytest.mark.django_db
def test_the_api_filters_by_metrics_params_and_tags(owner_api, three_runs):
    res = owner_api.get("/api/v1/runs/", {"filter": EXAMPLE})
    assert res.status_code == 200, res.json()
    assert [r["id"] for r in res.json()["results"]] == [str(three_runs[0].id)]
    assert res.json()["results"][0]["params"] == {"criterion": "gini", "max_depth": "4"}
    assert res.json()["results"][0]["tags"] == {"team": "churn"}
    res = owner_api.get("/api/v1/runs/", {"filter": 'tags.team LIKE "ch%" and params.max_depth != "4"'})
    assert [r["id"] for r in res.json()["results"]] == [str(three_runs[1].id)]
    res = owner_api.get("/api/v1/runs/", {"filter": 'params.max_depth IN ("4", "8") and attributes.number >= 2'})
    assert {r["id"] for r in res.json()["results"]} == {str(three_runs[1].id), str(three_runs[2].id)}


@pytest.mark.django_db
def test_the_api_sorts_by_a_param_and_a_tag(owner_api, three_runs):
    res = owner_api.get("/api/v1/runs/", {"ordering": "-param:max_depth"})
    assert [r["params"]["max_depth"] for r in res.json()["results"]] == ["8", "4", "4"]
    res = owner_api.get("/api/v1/runs/", {"ordering": "tag:team"})
    assert [r["tags"]["team"] for r in res.json()["results"]] == ["churn", "churn", "fraud"]


@pytest.mark.django_db
def test_a_malformed_filter_is_a_400_in_the_one_error_shape(owner_api, three_runs):
    res = owner_api.get("/api/v1/runs/", {"filter": "metrics.acc >> 0.9"})
    assert res.status_code == 400
    error = res.json()["error"]
    assert error["code"] == "invalid_filter" and "character 14" in error["message"] and "'>'" in error["message"]
    assert error["fields"]["filter"]


@pytest.mark.django_db
def test_the_filter_never_shows_another_workspaces_runs(outsider_api, three_runs):
    res = outsider_api.get("/api/v1/runs/", {"filter": 'tags.team = "churn"'})
    assert res.status_code == 200 and res.json()["results"] == []


@pytest.mark.django_db
def test_the_runs_page_filters_shows_param_columns_and_says_what_it_could_not_read(page_client, owner, three_runs):
    client = page_client(owner)
    page = client.get(reverse("run-list"), {"filter": EXAMPLE, "params": "max_depth"}).content.decode()
    assert f"#{three_runs[0].number}" in page and f"#{three_runs[1].number}<" not in page
    assert '<td class="param">4</td>' in page and "param%3Amax_depth" in page
    res = client.get(reverse("run-list"), {"filter": 'params.x > "4"'})
    assert res.status_code == 400
    text = res.content.decode()
    assert 'data-testid="filter-error"' in text and "compares as text" in text
