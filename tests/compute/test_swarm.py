"""The Swarm backend against the real engine in swarm mode (.ci/run makes it a single-node
manager): a service of a small scoring image with its keys as secrets, scaled, a killed task
replaced by Swarm, an update to a broken image rolled back by Swarm, placement on a label no
node has left pending. One service is shared by the module's tests (they run in order)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest

from compute import swarm
from compute.images import build_service_image, remove_image
from tests.helpers import wait_until
from tests.real_parts import missing_part

pytestmark = pytest.mark.docker

KEYS = ["swarm-primary-" + "p" * 20, "swarm-secondary-" + "s" * 20, "swarm-proxy-" + "x" * 20]
INTERNAL = "swarm-internal-" + "i" * 20
SCORE = b'''
import json

def init():
    pass

def run(input_str):
    return {"ok": True}
'''
BROKEN = b'''
def init():
    raise RuntimeError("this image cannot load its model")

def run(input_str):
    return "never"
'''
TAG = f"mlportal-test-swarm:{os.getpid()}"
BROKEN_TAG = f"mlportal-test-swarm-broken:{os.getpid()}"
NAME = f"mlportal-test-swarm-{os.getpid()}"
SERVICE_ID = f"test-swarm-{os.getpid()}"


@pytest.fixture(scope="module")
def swarm_manager(docker_engine):
    status = swarm.swarm_status()
    if not status["manager"]:
        missing_part("Docker engine", "the engine is not a swarm manager (.ci/run runs 'docker swarm init')")
    return status


@pytest.fixture(scope="module")
def images(small_env, swarm_manager):
    for tag, score in ((TAG, SCORE), (BROKEN_TAG, BROKEN)):
        build_service_image(tag=tag, env_image=small_env["tag"], app_files={"score.py": score},
                            labels={"mlportal.test": "yes"}, log=lambda line: None)
    yield {"good": TAG, "broken": BROKEN_TAG}
    swarm.remove_service(NAME, portal="test-swarm")
    swarm.remove_service(NAME + "-pinned", portal="test-swarm")

    def containers_gone():
        listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mlportal.id={SERVICE_ID}"],
                                capture_output=True, text=True).stdout.split()
        return not listed or None

    wait_until(containers_gone, timeout=90, interval=0.5, message="the test service's task containers to go")
    for tag in (TAG, BROKEN_TAG):
        remove_image(tag)


def spec(image: str, **overrides) -> swarm.SwarmSpec:
    values = dict(name=NAME, image=image, replicas=1, keys=list(KEYS), internal_key=INTERNAL,
                  env={"MLPORTAL_SERVICE_NAME": "swarmtest", "MLPORTAL_WORKERS": "1"}, cpus=0.5, memory_mb=256,
                  labels={"mlportal.id": SERVICE_ID, "mlportal.portal": "test-swarm"}, health_interval_s=1, monitor_s=3)
    values.update(overrides)
    return swarm.SwarmSpec(**values)


def serving(count: int, name: str = NAME) -> dict[int, dict]:
    def enough():
        running = swarm.running_tasks(swarm.service_tasks(name))
        return running if len(running) >= count else None

    return wait_until(enough, timeout=90, interval=0.5, message=f"{count} running task(s) of {name}")


def score(port: int, key: str | None) -> tuple[int, object]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=b'"{}"', headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_swarm_service_serves_with_its_keys_as_secrets_only(images):
    swarm.apply_service(spec(images["good"]))
    running = serving(1)
    task = running[1]
    assert task["node"] and task["port"]
    assert score(task["port"], KEYS[0]) == (200, {"ok": True})
    assert score(task["port"], None)[0] == 401
    inspected = subprocess.run(["docker", "service", "inspect", NAME], capture_output=True, text=True, check=True).stdout
    container = subprocess.run(["docker", "inspect", task["container_id"]], capture_output=True, text=True, check=True).stdout
    for secret in [*KEYS, INTERNAL]:
        assert secret not in inspected and secret not in container
    assert "MLPORTAL_SERVICE_KEYS_FILE=/run/secrets/mlportal-keys" in inspected
    assert '"Order": "start-first"' in inspected and '"FailureAction": "rollback"' in inspected
    # A key in the environment is refused before anything reaches the engine.
    with pytest.raises(ValueError, match="keys go in secrets"):
        swarm.service_spec(spec(images["good"], env={"MLPORTAL_SERVICE_KEYS": ",".join(KEYS)}))


def test_swarm_replaces_a_killed_task_and_scales(images):
    first = serving(1)[1]
    subprocess.run(["docker", "kill", first["container_id"]], capture_output=True, check=True)

    def replaced():
        running = swarm.running_tasks(swarm.service_tasks(NAME))
        return running[1] if 1 in running and running[1]["id"] != first["id"] else None

    again = wait_until(replaced, timeout=90, interval=0.5, message="Swarm to replace the killed task")
    history = swarm.service_tasks(NAME)
    dead = next(t for t in history if t["id"] == first["id"])
    assert dead["state"] in ("failed", "shutdown", "complete") and dead["node"] == again["node"]
    assert score(again["port"], KEYS[1]) == (200, {"ok": True})

    swarm.scale_service(NAME, 2)
    two = serving(2)
    assert sorted(two) == [1, 2] and len({t["port"] for t in two.values()}) == 2
    assert swarm.update_state(NAME)["replicas"] == 2


def test_an_update_to_a_broken_image_is_rolled_back_by_swarm(images):
    before = {t["id"] for t in serving(2).values()}
    swarm.apply_service(spec(images["broken"], replicas=2))

    def settled():
        state = swarm.update_state(NAME)
        return state if state["state"] in swarm.SETTLED_UPDATE else None

    state = wait_until(settled, timeout=150, interval=1, message="Swarm to roll the broken update back")
    assert state["state"] == "rollback_completed" and state["image"] == images["good"], state
    running = serving(2)
    assert all(t["image"] == images["good"] for t in running.values())
    assert {t["id"] for t in running.values()} & before  # start-first: a good task kept serving throughout
    assert score(running[1]["port"], KEYS[0])[0] == 200


def test_placement_on_a_label_no_node_has_stays_pending_with_the_reason(images):
    constraints = swarm.placement_constraints({"node.stage": "nowhere", "team": "churn"})
    assert constraints == ["node.labels.stage==nowhere"]
    assert swarm.nodes_matching(constraints, swarm.node_names()) == []
    swarm.apply_service(spec(images["good"], name=NAME + "-pinned", constraints=constraints))

    def pending():
        tasks = swarm.service_tasks(NAME + "-pinned")
        return tasks[0] if tasks and tasks[0]["state"] == "pending" and tasks[0]["error"] else None

    task = wait_until(pending, timeout=60, interval=0.5, message="the pinned task to be pending")
    assert "no suitable node" in task["error"]
    with pytest.raises(ValueError, match="cannot be a placement constraint"):
        swarm.placement_constraints({"node.bad=key": "x"})
