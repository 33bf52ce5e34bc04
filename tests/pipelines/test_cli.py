"""`mlportal pipeline …` and `mlportal webhook …` against the live portal: bad input is one
`error:` line naming what to change; the webhook secret is printed once."""
from __future__ import annotations

import json

import pytest

from tests.cli.conftest import assert_one_error_line, cli, login, portal  # noqa: F401

pytestmark = pytest.mark.e2e


def test_pipeline_and_webhook_commands(cli, login, owner, workspace, project, recorded_service):  # noqa: F811
    recorded_service()
    login(owner)
    assert_one_error_line(cli("pipeline", "create", "-n", "retrain", "--project", "churn_prediction", "--script", "train.py",
                              "--service", "churnpred", "--schedule", "0 25 * * *"), contains="its hour field '25'")
    assert_one_error_line(cli("pipeline", "create", "-n", "retrain", "--project", "churn_prediction", "--script", "train.py",
                              "--service", "nope"), contains="No service 'nope'")
    created = cli("pipeline", "create", "-n", "retrain", "--project", "churn_prediction", "--script", "train.py",
                  "--service", "churnpred", "--schedule", "0 3 * * *", "--on-data", "--webhook", "--when-busy", "skip",
                  # local runs are off in this workspace: should a session's worker take the run, it ends at once
                  "-c", "local")
    assert created.code == 0, created.err
    assert "schedule '0 3 * * *'" in created.err and "secret (shown this once): " in created.err
    listed = json.loads(cli("pipeline", "list", "-o", "json").out)
    assert [(p["name"], p["schedule"], p["trigger_on_data"], p["webhook"]) for p in listed] == [("retrain", "0 3 * * *", True, True)]
    assert_one_error_line(cli("pipeline", "update", "-n", "retrain", "--schedule", "every day at noon"), contains="does not parse")
    updated = cli("pipeline", "update", "-n", "retrain", "--schedule", "every 6 hours", "--on-data", "off", "-o", "json")
    assert updated.code == 0 and json.loads(updated.out)["schedule"] == "every 6 hours", updated.err
    assert json.loads(updated.out)["trigger_on_data"] is False
    queued = cli("pipeline", "run", "-n", "retrain")
    assert queued.code == 0 and "Pipeline run #1 of retrain is queued" in queued.err
    assert "run" in cli("pipeline", "show", "-n", "retrain", "--run", "1").out

    assert_one_error_line(cli("webhook", "create", "-n", "ci", "--url", "file:///etc/passwd"), contains="not an http(s) URL")
    made = cli("webhook", "create", "-n", "ci", "--url", "http://127.0.0.1:9/hook", "--events", "pipeline.finished")
    assert made.code == 0 and "secret (shown this once): " in made.err
    assert "pipeline.finished" in cli("webhook", "list").out
    assert cli("webhook", "test", "-n", "ci").code == 0
    deliveries = json.loads(cli("webhook", "deliveries", "-n", "ci", "-o", "json").out)
    assert [d["event"] for d in deliveries] == ["ping"]
