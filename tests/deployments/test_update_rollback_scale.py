"""Changing a running service: update to another image (no downtime; a broken image leaves the
old one serving), rollback to an earlier image, scaling up and down."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from compute.containers import container_state
from tests.deployments.conftest import BROKEN_SCORE, SAMPLE_REQUEST, score, service_containers, wait_for, wait_settled

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def test_an_update_to_a_broken_image_leaves_the_old_one_serving_then_rollback_and_update_work(
        deploy_worker, owner_api, create_realtime, built_image):
    create_realtime(owner_api, "churnpred")
    first = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    assert first["status"] == "healthy", first["error"]
    broken = built_image(owner_api, "broken", score=BROKEN_SCORE)
    good = built_image(owner_api, "churnpred-v2")
    key = owner_api.get("/api/v1/services/churnpred/keys/").json()["primary"]
    client = APIClient()

    response = owner_api.post("/api/v1/services/churnpred/update/", {"image": broken["id"]}, format="json")
    assert response.status_code == 202 and response.json()["status"] == "updating"
    after = wait_settled(owner_api, "churnpred")
    assert after["status"] == "healthy" and after["image"] == "churnpred:1"
    assert "The update to image broken:1 failed" in after["last_update_error"]
    assert "exited with code" in after["last_update_error"] and "model store is unreachable" in after["last_update_error"]
    assert after["containers"][0]["container_id"] == first["containers"][0]["container_id"]
    assert score(client, "churnpred", SAMPLE_REQUEST, key=key).json() == "0"
    assert [c["id"] for c in service_containers(first["id"])] == [first["containers"][0]["container_id"]]
    assert any("RuntimeError" in e["message"] for e in after["events"])  # the broken container's log tail

    assert owner_api.post("/api/v1/services/churnpred/update/", {"image": good["ref"]}, format="json").status_code == 202
    updated = wait_settled(owner_api, "churnpred")
    assert updated["status"] == "healthy" and updated["image"] == "churnpred-v2:1" and updated["last_update_error"] == ""
    assert [(r["number"], r["image"], r["reason"]) for r in updated["revisions"]] == [
        (2, "churnpred-v2:1", "update"), (1, "churnpred:1", "create")]
    assert updated["revisions"][1]["ended_at"] and updated["revisions"][0]["ended_at"] is None
    assert score(client, "churnpred", SAMPLE_REQUEST, key=key).json() == "0"
    assert container_state(first["containers"][0]["container_id"]) is None

    rolled = owner_api.post("/api/v1/services/churnpred/rollback/", {"revision": 1}, format="json")
    assert rolled.status_code == 202, rolled.json()
    back = wait_settled(owner_api, "churnpred")
    assert back["image"] == "churnpred:1" and [r["reason"] for r in back["revisions"]] == ["rollback", "update", "create"]
    assert score(client, "churnpred", SAMPLE_REQUEST, key=key).json() == "0"
    # Rolling back to an image it never served is refused; to the current one too.
    never = owner_api.post("/api/v1/services/churnpred/rollback/", {"image": broken["id"]}, format="json")
    assert never.status_code == 400 and "never served image broken:1" in never.json()["error"]["message"]
    same = owner_api.post("/api/v1/services/churnpred/rollback/", {"image": "churnpred:1"}, format="json")
    assert same.status_code == 400 and "already" in same.json()["error"]["message"]
    again = owner_api.post("/api/v1/services/churnpred/rollback/", {"image": "churnpred-v2:1"}, format="json")
    assert again.status_code == 202
    assert wait_settled(owner_api, "churnpred")["image"] == "churnpred-v2:1"


def test_scaling_to_two_replicas_serves_from_both_and_back_to_one(deploy_worker, owner_api, create_realtime):
    create_realtime(owner_api, "churnpred")
    wait_for(owner_api, "churnpred", ("healthy", "failed"))
    key = owner_api.get("/api/v1/services/churnpred/keys/").json()["primary"]
    client = APIClient()
    response = owner_api.post("/api/v1/services/churnpred/scale/", {"replicas": 2}, format="json")
    assert response.status_code == 202
    scaled = wait_settled(owner_api, "churnpred")
    assert scaled["replicas"] == 2 and [c["number"] for c in scaled["containers"]] == [1, 2]
    assert all(c["ready"] for c in scaled["containers"])
    served = set()
    for _ in range(6):
        answer = score(client, "churnpred", SAMPLE_REQUEST, key=key)
        assert answer.json() == "0"
        served.add(answer["X-MLPortal-Replica"])
    assert served == {"1", "2"}
    per_replica = owner_api.get("/api/v1/services/churnpred/metrics/?live=1").json()["replicas"]
    assert [r["requests"] >= 3 for r in per_replica] == [True, True]
    assert len(service_containers(scaled["id"])) == 2

    over = owner_api.post("/api/v1/services/churnpred/scale/", {"replicas": 11}, format="json")
    assert over.status_code == 400 and "at most 10" in over.json()["error"]["message"]
    assert owner_api.post("/api/v1/services/churnpred/scale/", {"replicas": 1}, format="json").status_code == 202
    down = wait_settled(owner_api, "churnpred")
    assert down["replicas"] == 1 and [c["number"] for c in down["containers"]] == [1]
    assert [c["id"] for c in service_containers(down["id"])] == [down["containers"][0]["container_id"]]
    assert score(client, "churnpred", SAMPLE_REQUEST, key=key)["X-MLPortal-Replica"] == "1"
    # The current count is a no-op, answered at once.
    same = owner_api.post("/api/v1/services/churnpred/scale/", {"replicas": 1}, format="json")
    assert same.status_code == 202 and same.json()["status"] == "healthy"


def test_an_image_it_served_before_can_be_deleted_and_the_history_keeps_its_name(
        deploy_worker, owner_api, create_realtime, built_image):
    create_realtime(owner_api, "churnpred")
    wait_for(owner_api, "churnpred", ("healthy", "failed"))
    good = built_image(owner_api, "churnpred-v2")
    owner_api.post("/api/v1/services/churnpred/update/", {"image": good["id"]}, format="json")
    assert wait_settled(owner_api, "churnpred")["image"] == "churnpred-v2:1"
    in_use = owner_api.delete(f"/api/v1/images/{good['id']}/")
    assert in_use.status_code == 409 and "used by service churnpred" in in_use.json()["error"]["message"]
    assert owner_api.delete("/api/v1/images/churnpred:1/").status_code == 204
    history = owner_api.get("/api/v1/services/churnpred/").json()["revisions"]
    assert [(r["image"], r["image_id"]) for r in history] == [("churnpred-v2:1", good["id"]), ("churnpred:1", None)]
    refused = owner_api.post("/api/v1/services/churnpred/rollback/", {"revision": 1}, format="json")
    assert refused.status_code == 400 and "churnpred:1, which was deleted since" in refused.json()["error"]["message"]
