"""Cluster environments on Docker Swarm (the shared engine is a single-node swarm manager; .ci/run
makes it one), with the real worker and the real gateway: the churn service deployed to a cluster
environment scores "0" through the portal; its keys are not in `docker service inspect`; an
update to a broken image is rolled back by Swarm and the portal says so; a killed task is
replaced by Swarm and shown with its node; scaling; deletion removes the Swarm service and its
secrets; a placement label no node has keeps the service creating with Swarm's reason. Setting one up on an engine in no swarm says so and offers a single-node swarm (a
check on the states the engine reports, since the shared engine must stay a manager)."""
from __future__ import annotations

import subprocess

import pytest

from tests.deployments.conftest import BROKEN_SCORE, SAMPLE_REQUEST, wait_for, wait_settled
from tests.helpers import wait_until
from tests.real_parts import missing_part

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def test_a_cluster_service_scores_keeps_its_keys_secret_and_survives_a_broken_update_a_killed_task_and_scaling(
        deploy_worker, gateway, owner_api, swarm_env, create_realtime, built_image):
    assert swarm_env["kind"] == "cluster" and swarm_env["swarm"]["manager"]
    response = create_realtime(owner_api, "churnpred", environment="production")
    assert response.status_code == 201, response.json()
    service = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    assert service["status"] == "healthy", service["error"]
    assert service["environment_kind"] == "cluster" and len(service["containers"]) == 1
    replica = service["containers"][0]
    assert replica["node"] and replica["task_id"]
    keys = owner_api.get("/api/v1/services/churnpred/keys/").json()
    status, headers, body = gateway.score("churnpred", SAMPLE_REQUEST, keys["primary"])
    assert (status, body) == (200, "0"), body

    name = f"mlportal-churnpred-{service['id'].replace('-', '')[:8]}"
    inspected = docker("service", "inspect", name)
    assert keys["primary"] not in inspected and keys["secondary"] not in inspected
    assert "MLPORTAL_SERVICE_KEYS=" not in inspected and "/run/secrets/mlportal-keys" in inspected
    # The spec names the image by its id, not its tag: a tag may move to another build (another
    # portal on a shared engine built the same name), and Swarm would start that one for a new task.
    from registry.models import Image

    built = Image.objects.get(pk=service["image_id"])
    assert docker("service", "inspect", "-f", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", name).strip() == built.image_id

    # An update to an image whose init() raises: Swarm rolls it back, the portal says so.
    broken = built_image(owner_api, "broken", score=BROKEN_SCORE)
    assert owner_api.post("/api/v1/services/churnpred/update/", {"image": broken["id"]}, format="json").status_code == 202
    after = wait_settled(owner_api, "churnpred", timeout=300)
    assert after["status"] == "healthy" and after["image"] == service["image"]
    assert "Swarm rolled it back" in after["last_update_error"], after["last_update_error"]
    assert any("Swarm rolled it back" in e["message"] for e in after["events"])
    assert gateway.score("churnpred", SAMPLE_REQUEST, keys["secondary"])[2] == "0"

    # A killed task: Swarm replaces it; the portal shows the event with the node, from the quick look
    # the beat takes every MLPORTAL_SWARM_WATCH_SECONDS (no full sweep needed).
    current = after["containers"][0]
    docker("kill", current["container_id"])
    from deployments.cluster import watch

    def replaced():
        watch()
        body = owner_api.get("/api/v1/services/churnpred/").json()
        rows = body["containers"]
        return body if rows and rows[0]["task_id"] != current["task_id"] else None

    shown = wait_until(replaced, timeout=120, interval=1, message="the portal to show Swarm's new task")
    message = next(e["message"] for e in shown["events"] if "Swarm replaced it" in e["message"])
    assert current["task_id"][:12] in message and f"on node {current['node']}" in message
    assert shown["containers"][0]["restarts"] == 1
    assert gateway.score("churnpred", SAMPLE_REQUEST, keys["primary"])[2] == "0"

    # Scaling.
    assert owner_api.post("/api/v1/services/churnpred/scale/", {"replicas": 2}, format="json").status_code == 202
    scaled = wait_settled(owner_api, "churnpred", timeout=180)
    assert scaled["replicas"] == 2 and sorted(r["number"] for r in scaled["containers"]) == [1, 2]
    served: set[str] = set()

    def both_serve():  # the gateway reads the new row within its refresh period
        served.update(gateway.score("churnpred", SAMPLE_REQUEST, keys["primary"])[1]["x-mlportal-replica"] for _ in range(6))
        return served == {"1", "2"} or None

    wait_until(both_serve, timeout=10, interval=0.3, message="both tasks to answer")

    # Deleting removes the Swarm service and its secrets.
    assert owner_api.delete("/api/v1/services/churnpred/").status_code == 202
    wait_until(lambda: owner_api.get("/api/v1/services/churnpred/").status_code == 404, timeout=120,
               message="the service to be deleted")
    assert name not in docker("service", "ls", "--format", "{{.Name}}").split()
    assert not docker("secret", "ls", "-q", "--filter", f"label=mlportal.id={service['id']}").split()


def test_an_engine_that_is_no_swarm_manager_is_refused_with_how_to_make_it_one():
    """The shared engine must stay a swarm manager (others' tests run on it, and a second engine
    on this machine would fight it over docker0 and docker_gwbridge), so the refusal is checked on
    the swarm states the engine reports (``docker info``'s Swarm.LocalNodeState)."""
    from compute.swarm import NotAManager, check_manager

    with pytest.raises(NotAManager) as inactive:
        check_manager({"state": "inactive", "manager": False}, where="tcp://10.0.0.5:2375")
    assert "tcp://10.0.0.5:2375 is not in a swarm" in str(inactive.value) and "docker swarm init" in str(inactive.value)
    assert inactive.value.state == "inactive"
    with pytest.raises(NotAManager, match="is a swarm worker node, not a manager"):
        check_manager({"state": "active", "manager": False}, where="tcp://10.0.0.6:2375")
    assert check_manager({"state": "active", "manager": True}, where="x")["manager"]


def test_cluster_setup_on_the_manager_engine_and_its_bad_input(owner_api, contributor_api):
    from compute import swarm
    from deployments.models import Environment

    if not swarm.swarm_status()["manager"]:
        missing_part("Docker engine", "the engine is not a swarm manager (.ci/run runs 'docker swarm init')")
    # init_swarm on an engine that is a manager already leaves it as it is.
    made = owner_api.post("/api/v1/environments/", {"name": "production", "kind": "cluster", "init_swarm": True},
                          format="json")
    assert made.status_code == 201, made.json()
    assert made.json()["swarm"]["manager"] is True and "already" in made.json()["notice"]
    bad_label = owner_api.post("/api/v1/environments/", {"name": "prod2", "kind": "cluster",
                                                         "labels": {"node.bad=key": "x"}}, format="json")
    assert bad_label.status_code == 400 and "labels" in bad_label.json()["error"]["fields"]
    local_init = owner_api.post("/api/v1/environments/", {"name": "prod3", "init_swarm": True}, format="json")
    assert local_init.status_code == 400 and "init_swarm" in local_init.json()["error"]["fields"]
    assert list(Environment.objects.values_list("name", flat=True)) == ["production"]


def test_a_placement_label_no_node_has_keeps_the_service_creating_with_swarms_reason(deploy_worker, owner_api, swarm_env,
                                                                                    create_realtime):
    made = owner_api.post("/api/v1/environments/", {"name": "pinned", "kind": "cluster",
                                                    "labels": {"node.stage": "nowhere"}}, format="json")
    assert made.status_code == 201, made.json()
    assert create_realtime(owner_api, "pinned", environment="pinned").status_code == 201

    def pending():
        body = owner_api.get("/api/v1/services/pinned/").json()
        assert body["status"] == "creating", body["error"]
        return body if body["error"].startswith("pending: Swarm cannot place it") else None

    body = wait_until(pending, timeout=600, interval=1, message="the service to wait for a node with its label")
    assert "it starts once a node matches the environment's placement labels" in body["error"]
    assert any(e["message"] == body["error"] for e in body["events"]) and not body["containers"]
    assert owner_api.delete("/api/v1/services/pinned/").status_code == 202
    wait_until(lambda: owner_api.get("/api/v1/services/pinned/").status_code == 404, timeout=120,
               message="the service to be deleted")
    assert f"mlportal-pinned-{body['id'].replace('-', '')[:8]}" not in docker("service", "ls", "--format", "{{.Name}}").split()
