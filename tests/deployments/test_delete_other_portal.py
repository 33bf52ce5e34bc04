"""Service ids are unique within one portal only: deleting this portal's service never removes a
container that another portal on the same engine labelled with the same `mlportal.id`."""
from __future__ import annotations

import os

import pytest

from compute.containers import container_state, start_service_container
from compute.runner import remove_container
from tests.deployments.conftest import service_containers, wait_for
from tests.helpers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.integration]

OTHER_PORTAL = "a-second-portal-instance"


def test_deleting_a_service_leaves_another_portals_container_with_the_same_id(deploy_worker, owner_api, create_realtime):
    name = f"churn-shared-id-{os.getpid()}"
    create_realtime(owner_api, name, replicas=1)
    service = wait_for(owner_api, name, ("healthy", "failed"))
    assert service["status"] == "healthy"
    ours = service_containers(service["id"])
    theirs = start_service_container(image=service["image_tag"], service_id=str(service["id"]), replica=0, env={},
                                     name=f"mlportal-test-theirs-{os.getpid()}", labels={"mlportal.portal": OTHER_PORTAL})
    try:
        assert owner_api.delete(f"/api/v1/services/{name}/").status_code == 202
        wait_until(lambda: owner_api.get(f"/api/v1/services/{service['id']}/").status_code == 404, timeout=60,
                   message="the service to be gone")
        assert ours and all(container_state(c["id"]) is None for c in ours)
        assert container_state(theirs["id"]) is not None
    finally:
        remove_container(theirs["id"])
