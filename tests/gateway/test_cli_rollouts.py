"""`mlportal service update --canary/--shadow`, `service traffic`, `service promote|abort` with the
real worker and containers."""
from __future__ import annotations

import json

import pytest

from tests.cli.conftest import assert_one_error_line
from tests.deployments.conftest import service_containers, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def test_canary_traffic_and_abort_from_the_command_line(deploy_worker, cli, login, owner, owner_api, create_realtime,
                                                        built_image):
    assert create_realtime(owner_api, "churnpred").status_code == 201
    service = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    live_ids = {c["id"] for c in service_containers(service["id"])}
    other = built_image(owner_api, "churn-two")
    login(owner)
    assert_one_error_line(cli("service", "update", "-n", "churnpred", "--canary", "10"), contains="go with --image")
    assert_one_error_line(cli("service", "update", "-n", "churnpred", "--image", other["ref"], "--canary", "100"),
                          contains="from 1 to 99")
    assert_one_error_line(cli("service", "update", "-n", "churnpred", "--image", other["ref"], "--canary", "10",
                              "--shadow", "20"), contains="not both")
    assert {c["id"] for c in service_containers(service["id"])} == live_ids  # nothing started on refusal
    started = cli("service", "update", "-n", "churnpred", "--image", other["ref"], "--canary", "10")
    assert started.code == 0, started.err
    assert "Canary revision 2 gets 10% of requests" in started.err and "service promote -n churnpred" in started.err
    table = cli("service", "traffic", "-n", "churnpred").out.splitlines()
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert rows["1"][2:4] == ["live", "90"] and rows["2"][2:4] == ["canary", "10"], table
    assert_one_error_line(cli("service", "update", "-n", "churnpred", "--image", other["ref"], "--canary", "5"),
                          contains="canary of revision 2")
    changed = json.loads(cli("service", "traffic", "-n", "churnpred", "--weight", "25", "-o", "json").out)
    assert {r["number"]: r["weight"] for r in changed["revisions"]} == {1: 75, 2: 25}
    aborted = cli("service", "abort", "-n", "churnpred")
    assert aborted.code == 0 and "serves image churnpred:1" in aborted.err, aborted.err
    assert {c["id"] for c in service_containers(service["id"])} == live_ids
    assert_one_error_line(cli("service", "promote", "-n", "churnpred"), contains="nothing to promote")
