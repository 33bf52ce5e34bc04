"""The lab's `az provider register -n …` and `az provider list --query … -o table`, pasted as
they are: nothing to register here, and the list says whether the Docker engine behind them answers."""
from __future__ import annotations

import json

import pytest

from mlportal import health

from tests.cli.conftest import assert_one_error_line

pytestmark = pytest.mark.docker


def test_the_labs_provider_lines_work_and_report_the_engine(cli, login, owner, workspace):
    login(owner)
    registered = cli("provider", "register", "-n", "Microsoft.ContainerService", "-o", "json")
    assert registered.code == 0, registered.err
    assert json.loads(registered.out)["registrationState"] == "Registered"
    assert "nothing to register" in registered.err
    assert cli("provider", "register", "-n", "microsoft.containerregistry").code == 0  # any case, like az
    listed = cli("provider", "list", "--query", "[?contains(namespace,'Container')]", "-o", "table")
    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    assert [h.lower() for h in lines[0].split()[:2]] == ["namespace", "registrationstate"]  # --query: the keys as headers, as az does
    assert [line.split()[:2] for line in lines[2:]] == [["Microsoft.ContainerService", "Registered"],
                                                      ["Microsoft.ContainerRegistry", "Registered"]]


def test_with_the_engine_down_the_providers_are_not_registered_and_say_why(cli, login, owner, workspace, settings):
    settings.MLPORTAL_DOCKER_URL = "tcp://127.0.0.1:1"
    health.reset_cache()  # the health report is cached (one real check a second): forget the one taken with the engine up
    login(owner)
    try:
        rows = json.loads(cli("provider", "list", "-o", "json").out)
    finally:
        health.reset_cache()  # and leave no engine-down report behind for the next test
    assert {r["registrationState"] for r in rows} == {"NotRegistered"}
    assert all("the engine is down" in r["providedBy"] for r in rows)


def test_an_unknown_provider_is_one_clear_line(cli, login, owner, workspace):
    login(owner)
    assert_one_error_line(cli("provider", "register", "-n", "Microsoft.Compute"),
                          contains="unknown provider 'Microsoft.Compute': the lab registers Microsoft.ContainerService")
    missing = cli("provider", "register")
    assert missing.code != 0 and "-n/--namespace" in missing.err
