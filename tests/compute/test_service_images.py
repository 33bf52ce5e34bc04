"""Service images and containers (`az ml image create`, `az ml service create realtime`)."""

import json
import os
import time
import urllib.request

import pytest

from compute.containers import (
    container_logs,
    container_state,
    start_service_container,
    stop_container,
    wait_ready,
)
from compute.engine import BuildError, EngineError
from compute.images import build_service_image, image_exists, remove_image
from compute.runner import list_containers

pytestmark = pytest.mark.docker

SCORE = b"""
def init():
    global factor
    factor = 2

def run(input_str):
    import json
    return {"doubled": [x * factor for x in json.loads(input_str)["values"]]}
"""
TAG = f"mlportal-test-service:{os.getpid()}"


@pytest.fixture(scope="module")
def service_image(small_env):
    logs: list[str] = []
    built = build_service_image(tag=TAG, env_image=small_env["tag"], app_files={"score.py": SCORE},
                                labels={"mlportal.test": "yes"}, log=logs.append)
    yield {"tag": TAG, "logs": logs, **built}
    remove_image(TAG)


def score(port: int, payload: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_built_image_serves_scores_on_a_published_localhost_port(service_image):
    assert service_image["id"].startswith("sha256:") and service_image["size"] > 0
    assert any(line.startswith("Step ") and "COPY app/ /app/" in line for line in service_image["logs"])
    started = start_service_container(image=TAG, service_id="svc-test", replica=0,
                                      name=f"mlportal-test-svc-{os.getpid()}", env={}, memory_mb=256)
    try:
        assert started["host"] == "127.0.0.1" and started["port"] > 0
        wait_ready(host=started["host"], port=started["port"], container_id=started["id"], timeout_s=30)
        assert score(started["port"], {"values": [1, 2]}) == {"doubled": [2, 4]}
        assert container_state(started["id"]) == {"running": True, "status": "running", "exit_code": None, "oom": False}
        [listed] = [c for c in list_containers("service") if c["id"] == started["id"]]
        assert listed["labels"]["mlportal.id"] == "svc-test" and listed["labels"]["mlportal.replica"] == "0"
        assert "serving" in container_logs(started["id"])
    finally:
        stop_container(started["id"])
    assert container_state(started["id"]) is None
    stop_container(started["id"])  # a second stop is fine


def test_a_rebuild_with_a_changed_score_py_takes_seconds(service_image, small_env):
    tag = f"{TAG}-v2"
    started = time.monotonic()
    built = build_service_image(tag=tag, env_image=small_env["tag"],
                                app_files={"score.py": SCORE.replace(b"factor = 2", b"factor = 3")},
                                labels={}, log=lambda line: None)
    elapsed = time.monotonic() - started
    try:
        assert built["id"] != service_image["id"]
        assert elapsed < 10, f"rebuild took {elapsed:.1f} s"
        print(f"service image rebuild took {elapsed:.2f} s")
    finally:
        assert remove_image(tag) is True
    assert remove_image(tag) is False and not image_exists(tag)


def test_a_failing_dockerfile_step_raises_build_error_with_the_step(small_env):
    with pytest.raises(BuildError) as caught:
        build_service_image(tag=f"{TAG}-broken", env_image=small_env["tag"],
                            app_files={"score.py": b"def init(:\n"}, labels={}, log=lambda line: None)
    assert caught.value.step.startswith("6/") and "compileall" in caught.value.step
    assert "SyntaxError" in caught.value.log_tail or "invalid syntax" in caught.value.log_tail
    assert "\n" not in str(caught.value)
    assert not image_exists(f"{TAG}-broken")


def test_a_build_over_its_time_limit_is_stopped(small_env):
    # Compiling about two million lines keeps the compileall step busy well past one second.
    heavy = {f"m{i}.py": b"x = 1\n" * 25000 for i in range(80)}
    started = time.monotonic()
    with pytest.raises(BuildError, match="over its time limit of 1 s") as caught:
        build_service_image(tag=f"{TAG}-slow", env_image=small_env["tag"],
                            app_files={"score.py": SCORE, **heavy}, labels={}, log=lambda line: None,
                            timeout_s=1)
    assert time.monotonic() - started < 30
    assert not image_exists(f"{TAG}-slow")
    assert caught.value.step


def test_unsafe_app_file_names_are_refused(small_env):
    for name in ["/etc/passwd", "../score.py", "a/../../b"]:
        with pytest.raises(ValueError):
            build_service_image(tag=f"{TAG}-x", env_image=small_env["tag"], app_files={name: b""},
                                labels={}, log=lambda line: None)


def test_wait_ready_reports_a_container_that_exits_with_its_last_log_lines(small_env):
    tag = f"{TAG}-crash"
    build_service_image(tag=tag, env_image=small_env["tag"],
                        app_files={"score.py": b"def init():\n    raise RuntimeError('model.pkl is missing')\n"
                                               b"def run(x):\n    return x\n"},
                        labels={}, log=lambda line: None)
    started = start_service_container(image=tag, service_id="svc-crash", replica=0,
                                      name=f"mlportal-test-crash-{os.getpid()}", env={})
    try:
        with pytest.raises(EngineError) as caught:
            wait_ready(host=started["host"], port=started["port"], container_id=started["id"], timeout_s=30)
        assert "exited with code" in str(caught.value) and "before it was ready" in str(caught.value)
        assert "model.pkl is missing" in caught.value.log_tail
    finally:
        stop_container(started["id"])
        remove_image(tag)
