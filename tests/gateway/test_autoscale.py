"""Autoscaling on a local environment with the real worker, real replicas and the real gateway:
under a bounded load from this test (127.0.0.1, four clients, at most 90 s) an autoscaled service
goes from 1 to at least 2 replicas, and back to 1 once the load stopped and the (short) stable
window passed, with every request answered 200 through both moves; each decision is an event
with its figures and the samples chart the replicas and the utilisation."""
from __future__ import annotations

import threading
import time

import pytest

from tests.deployments.conftest import SAMPLE_REQUEST, wait_for
from tests.helpers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.integration]

# One scoring worker per replica (cpus 0.5) busy 0.1 s per request: four clients keep it busy.
SLOW_SCORE = b'''import time


def init():
    pass


def run(input_df):
    time.sleep(0.1)
    return "0"
'''
STABLE_SECONDS = 6
LOAD_SECONDS = 90  # the most the load runs (a replica starts in 10-35 s on a busy 2-core machine); it stops once a second one served


class Load:
    """``clients`` threads scoring through the gateway until stopped (or ``limit`` seconds)."""

    def __init__(self, gateway, key: str, clients: int, limit: float = LOAD_SECONDS, pause: float = 0.0) -> None:
        self.gateway, self.key, self.limit, self.pause = gateway, key, limit, pause
        self.stop = threading.Event()
        self.answers: list[tuple[int, str, str]] = []  # (status, replica, body on failure)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                status, headers, body = self.gateway.score("auto", SAMPLE_REQUEST, self.key, timeout=30)
                answer = (status, headers.get("x-mlportal-replica", ""), "" if status == 200 else str(body)[:200])
            except OSError as exc:
                answer = (0, "", f"{type(exc).__name__}: {exc}")
            with self.lock:
                self.answers.append(answer)
            if self.pause:
                self.stop.wait(self.pause)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=40)

    def failures(self) -> list:
        with self.lock:
            return [a for a in self.answers if a[0] != 200]

    def replicas_seen(self) -> set[str]:
        with self.lock:
            return {a[1] for a in self.answers if a[0] == 200}


def test_an_autoscaled_service_goes_up_under_load_and_back_down_without_a_failed_request(
        deploy_worker, gateway, owner_api, built_image):
    image = built_image(owner_api, "slow", score=SLOW_SCORE)
    created = owner_api.post("/api/v1/services/", {
        "name": "auto", "image": image["ref"], "cpus": 0.5, "memory_mb": 512, "autoscale_enabled": True,
        "autoscale_max_replicas": 3, "autoscale_stable_seconds": STABLE_SECONDS}, format="json")
    assert created.status_code == 201, created.json()
    service = wait_for(owner_api, "auto", ("healthy", "failed"))
    assert service["status"] == "healthy" and service["replicas"] == 1, service["error"]
    key = owner_api.get("/api/v1/services/auto/keys/").json()["primary"]

    with Load(gateway, key, clients=4) as load:
        up = wait_until(lambda: (lambda s: s if s["replicas"] >= 2 and s["status"] == "healthy" else None)(
            owner_api.get("/api/v1/services/auto/").json()), timeout=80, interval=0.5, message="a scale-up to 2+ replicas")
        wait_until(lambda: len(load.replicas_seen()) >= 2 or None, timeout=10, message="a second replica to serve")
    assert not load.failures(), load.failures()[:5]
    assert up["autoscale"]["enabled"] and len(up["containers"]) >= 2

    # A trickle keeps going through the scale-down: one client, two requests a second (0.2 busy workers).
    with Load(gateway, key, clients=1, limit=STABLE_SECONDS + 40, pause=0.4) as trickle:
        down = wait_until(lambda: (lambda s: s if s["replicas"] == 1 and s["status"] == "healthy" else None)(
            owner_api.get("/api/v1/services/auto/").json()), timeout=STABLE_SECONDS + 40, interval=0.5,
            message="the scale-down to 1 replica")
        time.sleep(1)  # requests after the old replicas stopped
    assert not trickle.failures(), trickle.failures()[:5]
    assert len(trickle.answers) >= 5 and len(down["containers"]) == 1

    events = [e["message"] for e in owner_api.get("/api/v1/services/auto/").json()["events"]]
    ups = [m for m in events if m.startswith("Autoscaler: 1 → ")]
    downs = [m for m in events if m.startswith("Autoscaler: ") and m.split(": ")[1].endswith("→ 1 replica(s)")]
    assert ups and "is above the target 70%" in ups[-1] and "busy workers" in ups[-1] and "utilisation" in ups[-1]
    assert downs and f"every sample of the last {STABLE_SECONDS} s" in downs[0]

    load_view = owner_api.get("/api/v1/services/auto/autoscale/?minutes=10").json()
    replicas = [s["replicas"] for s in load_view["samples"]]
    assert replicas[0] == 1 and max(replicas) >= 2 and replicas[-1] == 1
    assert max(s["utilization"] for s in load_view["samples"]) > 70
    assert len(load_view["decisions"]) >= 2
