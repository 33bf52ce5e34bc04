"""deployments.tasks.reconcile_services (beat, every 30 s) run by the real worker: dead replicas
are restarted, containers nobody owns are removed, an engine that stops answering makes services
unhealthy, and work whose task was lost is picked up again."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from compute.containers import container_state, start_service_container, stop_container
from compute.engine import connect
from deployments.models import Environment, Service
from deployments.worker import LABEL_PORTAL, portal_instance
from deployments.tasks import reconcile_services
from tests.deployments.conftest import SAMPLE_REQUEST, score, service_containers, wait_for
from tests.helpers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def _events(api, ref: str) -> list[str]:
    return [e["message"] for e in api.get(f"/api/v1/services/{ref}/").json()["events"]]


def test_a_killed_replica_is_noticed_and_replaced_with_the_same_image_and_keys(deploy_worker, owner_api, create_realtime):
    create_realtime(owner_api, "churnpred")
    before = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    assert before["status"] == "healthy", before["error"]
    old_id = before["containers"][0]["container_id"]
    with connect() as client:
        client.containers.get(old_id).kill()
    reconcile_services.delay()

    def replaced():
        body = owner_api.get("/api/v1/services/churnpred/").json()
        container = body["containers"][0]
        return body if container["container_id"] != old_id and container["ready"] else None

    after = wait_until(replaced, timeout=120, interval=0.5, message="the dead replica to be replaced")
    assert after["status"] == "healthy" and after["containers"][0]["restarts"] == 1
    assert any(f"container {old_id[:12]} exited with code 137" in m and "started a new one" in m
               for m in _events(owner_api, "churnpred"))
    assert container_state(old_id) is None
    key = owner_api.get("/api/v1/services/churnpred/keys/").json()["primary"]
    assert score(APIClient(), "churnpred", SAMPLE_REQUEST, key=key).json() == "0"


def test_containers_of_gone_services_and_strays_are_removed_but_not_another_portals(
        deploy_worker, owner_api, create_realtime):
    create_realtime(owner_api, "churnpred")
    service = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    image = Service.objects.get().image.image_id
    ours = {"mlportal.portal": portal_instance()}
    # What the deploy started carries this portal's label: that is what the reconciler goes by.
    assert [c["labels"].get(LABEL_PORTAL) for c in service_containers(service["id"])] == [portal_instance()]
    orphan = start_service_container(image=image, service_id=str(uuid.uuid4()), replica=1, env={},
                                     name=f"mlportal-test-orphan-{uuid.uuid4().hex[:6]}", labels=ours)
    stray = start_service_container(image=image, service_id=service["id"], replica=7, env={},
                                    name=f"mlportal-test-stray-{uuid.uuid4().hex[:6]}", labels=ours)
    foreign = start_service_container(image=image, service_id=str(uuid.uuid4()), replica=1, env={},
                                      name=f"mlportal-test-foreign-{uuid.uuid4().hex[:6]}",
                                      labels={LABEL_PORTAL: "another-portal"})
    try:
        reconcile_services.delay()
        wait_until(lambda: container_state(orphan["id"]) is None and container_state(stray["id"]) is None,
                   timeout=60, message="the orphan and the stray container to be removed")
        assert container_state(foreign["id"]) is not None  # another portal's: left alone
        remaining = [c["id"] for c in service_containers(service["id"])]
        assert remaining == [service["containers"][0]["container_id"]]
    finally:
        stop_container(foreign["id"])


def test_an_engine_that_stops_answering_makes_the_service_unhealthy_until_it_is_back(
        deploy_worker, owner_api, create_realtime):
    create_realtime(owner_api, "churnpred")
    wait_for(owner_api, "churnpred", ("healthy", "failed"))
    Environment.objects.filter(name="local").update(engine_url="tcp://127.0.0.1:1")
    reconcile_services.delay()
    down = wait_for(owner_api, "churnpred", ("unhealthy",), timeout=60)
    assert any("does not answer" in m and "127.0.0.1:1" in m for m in _events(owner_api, "churnpred"))
    assert down["containers"][0]["state"] == "unknown"
    Environment.objects.filter(name="local").update(engine_url="")
    reconcile_services.delay()
    wait_for(owner_api, "churnpred", ("healthy",), timeout=60)
    assert "Healthy again: every replica answers." in _events(owner_api, "churnpred")


def test_a_change_whose_task_was_lost_is_carried_out_after_a_worker_restart(deploy_worker, owner_api, create_realtime):
    create_realtime(owner_api, "churnpred")
    wait_for(owner_api, "churnpred", ("healthy", "failed"))
    # What a worker killed right after the request leaves behind: the change recorded, no task.
    long_ago = timezone.now() - timedelta(minutes=10)
    Service.objects.update(status="updating", pending={"op": "scale", "replicas": 2, "from": "healthy"}, updated_at=long_ago)
    reconcile_services.delay()
    done = wait_for(owner_api, "churnpred", ("healthy",), timeout=120)
    assert done["replicas"] == 2 and len(done["containers"]) == 2
