"""`mlportal service create|update --autoscale-*` against the portal (no worker: the settings are rows)."""
from __future__ import annotations

import json

import pytest

from tests.cli.conftest import assert_one_error_line
from tests.deployments.conftest import churn, create_realtime, storage_root, trained_churn  # noqa: F401
from tests.real_parts import missing_part


def test_autoscale_flags_set_show_and_refuse_bad_values(cli, login, owner, owner_api, create_realtime):  # noqa: F811
    assert create_realtime(owner_api, "churnpred").status_code == 201
    login(owner)
    on = cli("service", "update", "-n", "churnpred", "--autoscale-enabled", "--autoscale-max-replicas", "4",
             "--autoscale-stable-seconds", "30", "-o", "json")
    assert on.code == 0, on.err
    assert json.loads(on.out) == {"enabled": True, "min_replicas": 1, "max_replicas": 4, "target_utilization": 70,
                                  "refresh_seconds": 1, "stable_seconds": 30}
    assert "autoscaling 1-4 replicas at 70% of scoring workers busy" in on.err
    assert_one_error_line(cli("service", "update", "-n", "churnpred", "--autoscale-min-replicas", "5"),
                          contains="autoscale_min_replicas (5) is above autoscale_max_replicas (4)")
    assert_one_error_line(cli("service", "update", "-n", "churnpred", "--autoscale-target-utilization", "0"),
                          contains="from 1 to 100")
    assert_one_error_line(cli("service", "update", "-n", "churnpred", "--autoscale-refresh-seconds", "0"),
                          contains="at least 1 second")
    assert_one_error_line(cli("service", "update", "-n", "churnpred", "--autoscale-enabled", "-z", "2"),
                          contains="change autoscaling on its own")
    off = cli("service", "update", "-n", "churnpred", "--autoscale-enabled", "false")
    assert off.code == 0 and "autoscaling off" in off.err, off.err
    shown = json.loads(cli("service", "show", "-n", "churnpred", "-o", "json").out)
    assert shown["autoscale"]["enabled"] is False and shown["autoscale"]["max_replicas"] == 4
@pytest.mark.parametrize("flags, says", [
    (["--autoscale-min-replicas", "4", "--autoscale-max-replicas", "2"], "autoscale_min_replicas (4) is above autoscale_max_replicas (2)"),
    (["--autoscale-target-utilization", "101"], "autoscale_target_utilization must be from 1 to 100; got 101"),
    (["--autoscale-refresh-seconds", "0"], "autoscale_refresh_seconds must be at least 1 second"),
    (["--autoscale-max-replicas", "99"], "autoscale_max_replicas must be from 1 to 10; got 99"),
    (["-z", "2"], "A fixed replica count and autoscaling exclude each other"),
])
def test_create_with_bad_autoscale_flags_says_what_to_change_and_stores_nothing(cli, login, owner, workspace, churn, flags, says):  # noqa: F811
    from deployments.models import Service
    from registry.models import Image, Model

    for name, content in (("model.pkl", churn["model"]), ("score.py", churn["score"]), ("service_schema.json", churn["schema"])):
        (cli.home / name).write_bytes(content)
    login(owner)
    refused = cli("service", "create", "realtime", "-n", "auto", "--model-file", "model.pkl", "-f", "score.py",
                  "-s", "service_schema.json", "--autoscale-enabled", *flags)
    assert_one_error_line(refused, contains=says)
    assert not Service.objects.exists() and not Image.objects.exists() and not Model.objects.exists()


def test_env_setup_cluster_on_the_swarm_manager(cli, login, owner, workspace):
    from compute import swarm

    if not swarm.swarm_status()["manager"]:
        missing_part("Docker engine", "the engine is not a swarm manager (.ci/run runs 'docker swarm init')")
    login(owner)
    assert_one_error_line(cli("env", "setup", "-n", "production", "--init-swarm"), contains="--init-swarm goes with --cluster")
    made = cli("env", "setup", "-n", "production", "--cluster", "-o", "json")
    assert made.code == 0, made.err
    body = json.loads(made.out)
    assert body["kind"] == "cluster" and body["swarm"]["manager"] is True
