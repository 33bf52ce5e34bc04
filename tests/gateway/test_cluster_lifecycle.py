"""What else a local environment does, on a cluster (Swarm) one, with the real worker, Swarm and
gateway (issue 19: "create, update, canary, rollback, scale, keys, logs, delete"; create, a broken
update, scale and delete are in test_cluster_services.py, canary and shadow in
test_cluster_rollouts.py): the replicas' logs come from Swarm's tasks; a regenerated key is
refused at once at the gateway, then in the tasks Swarm rolled to the new secret, and is never in
the Swarm service's spec; an update and a rollback to the first revision have Swarm roll the
service's image each way, the answers following."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.deployments.conftest import SAMPLE_REQUEST, call_container, wait_for, wait_settled
from tests.gateway.test_rollouts import ONE_SCORE
from tests.helpers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def swarm_image(name: str) -> str:
    spec = json.loads(subprocess.run(["docker", "service", "inspect", name], capture_output=True, text=True,
                                     check=True).stdout)[0]["Spec"]
    return spec["TaskTemplate"]["ContainerSpec"]["Image"]


def test_logs_keys_update_and_rollback_on_a_cluster_service(deploy_worker, gateway, owner_api, swarm_env, create_realtime,
                                                            built_image):
    assert create_realtime(owner_api, "churnpred", environment="production").status_code == 201
    service = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    assert service["status"] == "healthy", service["error"]
    name = f"mlportal-churnpred-{service['id'].replace('-', '')[:8]}"
    first_tag = swarm_image(name)
    keys = owner_api.get("/api/v1/services/churnpred/keys/").json()
    for _ in range(3):
        assert gateway.score("churnpred", SAMPLE_REQUEST, keys["primary"])[:3:2] == (200, "0")

    # Logs: each task's, through Swarm.
    logs = owner_api.get("/api/v1/services/churnpred/logs/?tail=200").json()
    first = logs["replicas"][0]
    assert (first["replica"], first["task_id"], first["error"]) == (1, service["containers"][0]["task_id"], None), logs
    assert "POST /score" in first["text"] and "[replica 1] " in logs["text"], logs["text"][-2000:]

    # A new primary key: refused at the gateway at once, then by the task Swarm rolled to the new secret.
    regenerated = owner_api.post("/api/v1/services/churnpred/regenerate-key/", {"key": "primary"}, format="json")
    assert regenerated.status_code == 202, regenerated.json()
    new = owner_api.get("/api/v1/services/churnpred/keys/").json()
    assert new["primary"] != keys["primary"] and new["secondary"] == keys["secondary"]
    wait_until(lambda: gateway.score("churnpred", SAMPLE_REQUEST, keys["primary"])[0] == 401 or None, timeout=2,
               interval=0.1, message="the gateway to refuse the old key")
    after = wait_settled(owner_api, "churnpred", timeout=300)
    assert after["status"] == "healthy" and after["last_update_error"] == "", after
    assert after["containers"][0]["task_id"] != service["containers"][0]["task_id"]  # Swarm rolled the task
    task = after["containers"][0]
    assert call_container(task["host"], task["port"], "/score", SAMPLE_REQUEST, key=keys["primary"])[0] == 401
    assert call_container(task["host"], task["port"], "/score", SAMPLE_REQUEST, key=new["primary"]) == (200, "0")
    assert gateway.score("churnpred", SAMPLE_REQUEST, new["primary"])[:3:2] == (200, "0")
    rolled_logs = owner_api.get("/api/v1/services/churnpred/logs/?tail=50").json()
    assert rolled_logs["replicas"][0]["task_id"] == task["task_id"] and "GET /ready" in rolled_logs["replicas"][0]["text"]
    inspected = subprocess.run(["docker", "service", "inspect", name], capture_output=True, text=True, check=True).stdout
    assert new["primary"] not in inspected and new["secondary"] not in inspected

    # An update to another image, then a rollback to the first revision: Swarm rolls the image each way.
    other = built_image(owner_api, "churn-one", score=ONE_SCORE)
    assert owner_api.post("/api/v1/services/churnpred/update/", {"image": other["ref"]}, format="json").status_code == 202
    updated = wait_settled(owner_api, "churnpred", timeout=300)
    assert updated["status"] == "healthy" and updated["image"] == other["ref"], updated
    assert swarm_image(name) != first_tag
    wait_until(lambda: gateway.score("churnpred", SAMPLE_REQUEST, new["primary"])[2] == 1 or None, timeout=10,
               interval=0.3, message="the new image to answer")

    rolled = owner_api.post("/api/v1/services/churnpred/rollback/", {"revision": 1}, format="json")
    assert rolled.status_code == 202, rolled.json()
    back = wait_settled(owner_api, "churnpred", timeout=300)
    assert back["status"] == "healthy" and back["image"] == service["image"], back
    assert [r["reason"] for r in back["revisions"]] == ["rollback", "update", "create"]
    assert swarm_image(name) == first_tag
    wait_until(lambda: gateway.score("churnpred", SAMPLE_REQUEST, new["secondary"])[2] == "0" or None, timeout=10,
               interval=0.3, message="the first image to answer again")
