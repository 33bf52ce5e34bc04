"""`mlportal run list --filter/--params` and `run tag|note|params` against the live portal."""
from __future__ import annotations

import pytest

from runs import services
from tests.cli.conftest import assert_one_error_line
from tests.runs.conftest import finished_run  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

EXAMPLE = 'metrics."DTree Accuracy" > 0.9 and params.max_depth = "4" and tags.team = "churn"'


@pytest.fixture
def three_runs(owner, workspace, finished_run):
    project = services.project_create(workspace=workspace, name="scratch", user=owner)
    services.project_file_put(project=project, path="train.py", content=b"print('hello')\n", user=owner)
    runs = []
    for depth, team, acc in (("4", "churn", 0.93), ("8", "churn", 0.95), ("4", "fraud", 0.97)):
        run = finished_run(project, owner, metrics={"DTree Accuracy": acc})
        services.run_add_params(run=run, params={"max_depth": depth}, user=owner)
        services.run_annotate(run=run, user=owner, tags={"team": team})
        runs.append(run)
    return runs


@pytest.mark.integration
def test_the_cli_lists_runs_by_filter_and_shows_param_columns(cli, login, owner, three_runs):
    login(owner)
    outcome = cli("run", "list", "--filter", EXAMPLE, "--params", "max_depth", "-o", "table")
    assert outcome.code == 0, outcome.err
    body = outcome.out.splitlines()
    assert "param max_depth" in body[0] and len(body) == 3  # header, rule, one run
    assert_one_error_line(cli("run", "list", "--filter", "metrics.acc >> 1"), contains="character 14")


def test_the_cli_tags_notes_and_logs_params(cli, login, owner, three_runs):
    login(owner)
    run = three_runs[0]
    outcome = cli("run", "tag", str(run.id), "stage=baseline", "team=ops")
    assert outcome.code == 0, outcome.err
    assert "stage=baseline, team=ops" in outcome.err
    assert cli("run", "tag", str(run.id), "--delete", "stage").code == 0
    assert cli("run", "note", str(run.id), "--text", "depth 4 is enough").code == 0
    run.refresh_from_db()
    assert run.note == "depth 4 is enough" and dict(run.tags.values_list("key", "value")) == {"team": "ops"}
    outcome = cli("run", "params", str(run.id), "--set", "seed=7", "-o", "table")
    assert outcome.code == 0 and "seed" in outcome.out and "max_depth" in outcome.out
    assert_one_error_line(cli("run", "params", str(run.id), "--set", "max_depth=9"), contains="already logged")
    assert_one_error_line(cli("run", "tag", str(run.id), "novalue"), contains="KEY=VALUE")


def test_the_cli_compares_params_side_by_side(cli, login, owner, three_runs):
    login(owner)
    outcome = cli("run", "compare", str(three_runs[0].id), str(three_runs[1].id), "-o", "table")
    assert outcome.code == 0, outcome.err
    line = next(row for row in outcome.out.splitlines() if row.startswith("param: max_depth"))
    assert "4" in line and "8" in line and line.rstrip().endswith("*")
    tag = next(row for row in outcome.out.splitlines() if row.startswith("tag: team"))
    assert not tag.rstrip().endswith("*")
