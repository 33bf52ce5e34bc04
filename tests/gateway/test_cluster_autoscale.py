"""Autoscaling on a cluster (Swarm) environment with the real worker, Swarm and the gateway: under
a bounded load from this test (127.0.0.1, four clients, at most 90 s) the autoscaled service's
Swarm service goes from 1 to 2 tasks, and back to 1 once the load stopped and the (short) stable
window passed, every request answered 200 through both moves. The rule and its figures are
tested on a local environment (test_autoscale.py); this one proves the Swarm path."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.deployments.conftest import wait_for
from tests.gateway.test_autoscale import SLOW_SCORE, STABLE_SECONDS, Load
from tests.helpers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def _settled(api, replicas_ok):
    body = api.get("/api/v1/services/auto/").json()
    return body if replicas_ok(body["replicas"]) and body["status"] == "healthy" and len(body["containers"]) == body["replicas"] else None


def test_an_autoscaled_cluster_service_adds_a_task_under_load_and_drops_it_after(
        deploy_worker, gateway, owner_api, swarm_env, built_image):
    image = built_image(owner_api, "slow", score=SLOW_SCORE)
    created = owner_api.post("/api/v1/services/", {
        "name": "auto", "image": image["ref"], "environment": "production", "cpus": 0.5, "memory_mb": 512,
        "autoscale_enabled": True, "autoscale_max_replicas": 2, "autoscale_stable_seconds": STABLE_SECONDS}, format="json")
    assert created.status_code == 201, created.json()
    service = wait_for(owner_api, "auto", ("healthy", "failed"))
    assert service["status"] == "healthy" and service["replicas"] == 1, service["error"]
    key = owner_api.get("/api/v1/services/auto/keys/").json()["primary"]

    with Load(gateway, key, clients=4) as load:
        up = wait_until(lambda: _settled(owner_api, lambda n: n == 2), timeout=90, interval=0.5,
                        message="a scale-up to 2 Swarm tasks")
        wait_until(lambda: len(load.replicas_seen()) >= 2 or None, timeout=10, message="the second task to serve")
    assert not load.failures(), load.failures()[:5]
    assert all(c["task_id"] and c["node"] for c in up["containers"])

    with Load(gateway, key, clients=1, limit=STABLE_SECONDS + 40, pause=0.4) as trickle:
        wait_until(lambda: _settled(owner_api, lambda n: n == 1), timeout=STABLE_SECONDS + 40, interval=0.5,
                   message="the scale-down to 1 task")
    assert not trickle.failures(), trickle.failures()[:5]

    events = [e["message"] for e in owner_api.get("/api/v1/services/auto/").json()["events"]]
    assert any(m.startswith("Autoscaler: 1 → 2 replica(s)") for m in events), events
    assert any(m.startswith("Autoscaler: 2 → 1 replica(s)") for m in events), events
    assert "Scaled from 1 to 2 replicas (Swarm)." in events and "Scaled from 2 to 1 replicas (Swarm)." in events
    name = f"mlportal-auto-{service['id'].replace('-', '')[:8]}"
    spec = json.loads(subprocess.run(["docker", "service", "inspect", name], capture_output=True, text=True,
                                     check=True).stdout)[0]["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 1
