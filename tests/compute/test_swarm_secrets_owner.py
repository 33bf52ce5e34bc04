"""Swarm secrets and services carry `mlportal.id` and `mlportal.portal`: removing this portal's
service's secrets or a Swarm service by name never takes another portal's, whose service ids
(and so names) can be the same."""
from __future__ import annotations

import uuid

import pytest

from compute import swarm
from compute.engine import connect
from tests.compute.test_swarm import swarm_manager  # noqa: F401 - the fixture

pytestmark = [pytest.mark.docker, pytest.mark.integration]

OURS, THEIRS = "this-portal-instance", "a-second-portal-instance"


@pytest.fixture
def secrets(swarm_manager):
    service_id = str(uuid.uuid4())
    made = []
    with connect() as client:
        for portal in (OURS, THEIRS):
            made.append(client.api.create_secret(
                name=f"mlportal-test-{portal[:6]}-{service_id[:8]}", data=b"key",
                labels={"mlportal.id": service_id, "mlportal.portal": portal})["ID"])
    yield service_id
    with connect() as client:
        for secret_id in made:
            try:
                client.api.remove_secret(secret_id)
            except Exception:  # noqa: BLE001 - removed by the test
                pass


def _portals_with_secrets(service_id: str) -> set[str]:
    with connect() as client:
        return {s["Spec"]["Labels"]["mlportal.portal"]
                for s in client.api.secrets(filters={"label": [f"mlportal.id={service_id}"]})}


def test_removing_a_services_secrets_leaves_another_portals_with_the_same_service_id(secrets):
    removed = swarm.remove_secrets(secrets, portal=OURS, keep=())

    assert len(removed) == 1
    assert _portals_with_secrets(secrets) == {THEIRS}


def test_secrets_and_services_are_never_removed_without_naming_the_portal(secrets):
    with pytest.raises(ValueError, match="portal"):
        swarm.remove_secrets(secrets, portal="", keep=())
    with pytest.raises(ValueError, match="portal"):
        swarm.remove_service("anything", portal="")
    assert _portals_with_secrets(secrets) == {OURS, THEIRS}


def test_removing_a_swarm_service_by_name_leaves_another_portals_service_of_that_name(swarm_manager):
    name = f"mlportal-test-theirs-{uuid.uuid4().hex[:8]}"
    with connect() as client:
        created = client.api.create_service(
            {"ContainerSpec": {"Image": "mlportal-test-none:absent"}}, name=name,
            labels={"mlportal.id": "1", "mlportal.portal": THEIRS, "mlportal.kind": "service"})
    try:
        assert swarm.remove_service(name, portal=OURS) is False
        assert swarm.find_service(name) is not None
    finally:
        with connect() as client:
            client.api.remove_service(created["ID"])
