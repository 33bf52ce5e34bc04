"""A cluster environment on a real Docker engine that is in no swarm (a second engine, in a
container of its own: tests/deployments/second_engine.py), as the user meets it through the API,
the CLI and the Environments page in Chromium: each refuses it with a message saying how to make
the engine a manager and offering the portal's single-node swarm, and creates nothing; taking the
offer (the CLI's --init-swarm, the page's box) really makes that engine the manager of a new
single-node swarm, and the environment is created on it. The stand-in engine of test_not_a_swarm.py
covers what a real one cannot be made into here (a worker node of someone else's swarm)."""
from __future__ import annotations

import json

import pytest
from django.conf import settings

from deployments.models import Environment
from tests.cli.conftest import assert_one_error_line, cli, login, portal  # noqa: F401 (the CLI against the live server)
from tests.deployments.second_engine import second_engine
from tests.frontend.conftest import csp_reports, watched_page  # noqa: F401 (page fixtures that fail on CSP violations)

pytestmark = [pytest.mark.docker, pytest.mark.integration]


@pytest.fixture(scope="module")
def engine_in_a_container():
    with second_engine(settings.MLPORTAL_BASE_IMAGE) as started:
        yield started


@pytest.fixture
def engine(engine_in_a_container):
    engine_in_a_container.leave()  # a test before may have made it a manager
    assert engine_in_a_container.swarm()["LocalNodeState"] == "inactive"
    yield engine_in_a_container
    engine_in_a_container.leave()


def test_the_api_and_the_cli_refuse_it_saying_how_and_create_nothing(cli, login, owner, owner_api, engine):
    response = owner_api.post("/api/v1/environments/", {"name": "production", "kind": "cluster", "engine_url": engine.url},
                              format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "not_a_swarm_manager" and {"kind", "init_swarm"} <= set(error["fields"])
    assert f"The Docker engine at {engine.url} is not in a swarm" in error["message"]
    assert "docker swarm init" in error["message"] and "docker swarm join" in error["message"]

    login(owner)
    refused = cli("env", "setup", "-n", "production", "--cluster", "--engine-url", engine.url)
    assert_one_error_line(refused, contains=f"The Docker engine at {engine.url} is not in a swarm")
    line = refused.err_lines[-1]
    assert "docker swarm init" in line and "the CLI's --init-swarm" in line
    assert not Environment.objects.exists()
    assert engine.swarm()["LocalNodeState"] == "inactive"  # a refusal touches nothing on the engine


def test_the_clis_init_swarm_makes_the_engine_a_single_node_swarm_manager(cli, login, owner, workspace, engine):
    login(owner)
    made = cli("env", "setup", "-n", "production", "--cluster", "--init-swarm", "--engine-url", engine.url, "-o", "json")
    assert made.code == 0, made.err
    body = json.loads(made.out)
    assert body["kind"] == "cluster" and body["swarm"]["manager"] is True and body["swarm"]["nodes"] == 1
    assert f"note: Initialised a single-node swarm on {engine.url}" in made.err and "docker swarm join" in made.err
    seen = engine.swarm()  # asked of the engine itself
    assert seen["LocalNodeState"] == "active" and seen["ControlAvailable"] is True and seen["Nodes"] == 1
    assert body["swarm"]["state"] == "active" and body["swarm"]["managers"] == 1
    environment = Environment.objects.get()
    assert (environment.name, environment.kind, environment.engine_url) == ("production", "cluster", engine.url)


@pytest.mark.e2e
def test_the_page_shows_the_refusal_and_its_box_initialises_the_swarm(owner, workspace, live_server, watched_page,
                                                                       csp_reports, engine):
    page, problems = watched_page(owner)
    page.goto(f"{live_server.url}/environments/")
    form = page.locator("[data-testid=environment-form]")
    form.locator("#id_name").fill("production")
    form.locator("#id_kind").select_option("cluster")
    form.locator("#id_engine_url").fill(engine.url)
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    text = page.locator("[data-testid=environment-form]").inner_text()
    assert f"The Docker engine at {engine.url} is not in a swarm" in text and "docker swarm init" in text
    assert "Initialise a single-node swarm" in text
    assert not Environment.objects.exists() and engine.swarm()["LocalNodeState"] == "inactive"

    # The form kept what was typed; the offer is one box away.
    assert form.locator("#id_engine_url").input_value() == engine.url
    form.locator("#id_init_swarm").check()
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    assert f"Initialised a single-node swarm on {engine.url}" in page.content()
    environment = Environment.objects.get()
    assert environment.kind == "cluster" and page.url.endswith(f"/environments/{environment.pk}/")
    assert engine.swarm()["ControlAvailable"] is True
    problems.assert_none()
    assert csp_reports() == []
