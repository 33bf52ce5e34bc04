"""Canary and shadow rollouts on a cluster (Swarm) environment, with the real worker, Swarm and
gateway (issue 19: everything of a local environment works on a cluster one, canary included):
the new revision is a second Swarm service beside the live one; a canary answers its share and
promote rolls the live Swarm service to its image and removes the canary's; a shadow never
answers and abort removes its Swarm service, the live one untouched."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.deployments.conftest import SAMPLE_REQUEST, wait_for
from tests.gateway.test_rollouts import ONE_SCORE, _hammer, _running, _settled
from tests.helpers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def swarm_services(service_id: str) -> dict[str, str]:
    """name → image of the Swarm services of this portal service."""
    out = subprocess.run(["docker", "service", "ls", "--filter", f"label=mlportal.id={service_id}", "--format", "{{json .}}"],
                         capture_output=True, text=True, check=True).stdout
    return {row["Name"]: row["Image"] for row in map(json.loads, out.splitlines())}


def test_a_canary_and_a_shadow_run_as_second_swarm_services(deploy_worker, gateway, owner_api, swarm_env,
                                                             create_realtime, built_image):
    assert create_realtime(owner_api, "churnpred", environment="production").status_code == 201
    service = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    assert service["status"] == "healthy", service["error"]
    key = owner_api.get("/api/v1/services/churnpred/keys/").json()["primary"]
    live_name = f"mlportal-churnpred-{service['id'].replace('-', '')[:8]}"
    other = built_image(owner_api, "churn-one", score=ONE_SCORE)

    # A shadow: mirrored requests only, then aborted (its Swarm service goes, the live one stays).
    assert owner_api.post("/api/v1/services/churnpred/update/", {"image": other["ref"], "shadow": 50},
                          format="json").status_code == 202
    running = _running(owner_api)
    assert sorted(swarm_services(service["id"])) == sorted([live_name, f"{live_name}-r2"])
    shadow_rows = [c for c in running["containers"] if c["number"] > 100]
    assert len(shadow_rows) == 1 and shadow_rows[0]["task_id"] and shadow_rows[0]["node"]
    assert {(s, b) for s, _, b in _hammer(gateway, key, 40)} == {(200, "0")}
    assert owner_api.post("/api/v1/services/churnpred/abort/").status_code == 202
    aborted = _settled(owner_api)
    assert aborted["image"] == service["image"] and [c["number"] for c in aborted["containers"]] == [1]
    wait_until(lambda: list(swarm_services(service["id"])) == [live_name] or None, timeout=60,
               message="only the live Swarm service")

    # A canary at 50 %: both revisions answer; promote rolls the live Swarm service to its image.
    assert owner_api.post("/api/v1/services/churnpred/update/", {"image": other["ref"], "canary": 50},
                          format="json").status_code == 202
    running = _running(owner_api)
    revision = running["rollout"]["revision"]
    assert f"{live_name}-r{revision}" in swarm_services(service["id"])
    answers = {(h["x-mlportal-revision"], b) for _, h, b in _hammer(gateway, key, 60)}
    assert answers == {("1", "0"), (str(revision), 1)}, answers  # "1" is the JSON number 1
    assert owner_api.post("/api/v1/services/churnpred/promote/").status_code == 202
    promoted = _settled(owner_api)
    assert promoted["image"] == other["ref"] and [c["number"] for c in promoted["containers"]] == [1]
    assert any("Swarm rolled the live service to it start-first" in e["message"] for e in promoted["events"])
    wait_until(lambda: list(swarm_services(service["id"])) == [live_name] or None, timeout=60,
               message="only the live Swarm service")
    # The live Swarm service now runs the promoted image, named by its id (never a tag that may move).
    assert swarm_services(service["id"])[live_name] == other["image_id"]
    assert {(h["x-mlportal-revision"], b) for _, h, b in _hammer(gateway, key, 12)} == {(str(revision), 1)}


# A canary that writes control characters (OSC title, BEL, CSI clear screen) to its log on every request.
LOUD_CANARY_SCORE = b'''def init():
    pass


def run(input_df):
    print("canary says \\x1b]0;owned\\x07 then \\x1b[2J cleared", flush=True)
    return "1"
'''


def test_a_canarys_own_swarm_service_is_in_the_services_logs_labelled_and_escaped(deploy_worker, gateway, owner_api,
                                                                                   swarm_env, create_realtime, built_image,
                                                                                   cli, login, owner):
    assert create_realtime(owner_api, "churnpred", environment="production").status_code == 201
    service = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    assert service["status"] == "healthy", service["error"]
    key = owner_api.get("/api/v1/services/churnpred/keys/").json()["primary"]
    loud = built_image(owner_api, "churn-loud", score=LOUD_CANARY_SCORE)
    assert owner_api.post("/api/v1/services/churnpred/update/", {"image": loud["ref"], "canary": 10},
                          format="json").status_code == 202
    running = _running(owner_api)
    revision = running["rollout"]["revision"]
    canary_row = next(c for c in running["containers"] if c["number"] > 100)
    forced = {"X-MLPortal-Revision": str(revision)}
    assert {(s, b) for s, _, b in _hammer(gateway, key, 4, threads=1, headers=forced)} == {(200, 1)}

    def canary_logged():
        body = owner_api.get("/api/v1/services/churnpred/logs/?tail=200").json()
        return body if "canary says" in body["text"] else None

    logs = wait_until(canary_logged, timeout=30, interval=0.5, message="the canary's lines in the service's logs")
    by_number = {entry["replica"]: entry for entry in logs["replicas"]}
    assert by_number[1]["role"] == "live" and by_number[1]["error"] is None
    canary = by_number[canary_row["number"]]
    assert (canary["role"], canary["task_id"], canary["error"]) == ("canary", canary_row["task_id"], None), logs
    escaped = "canary says \\x1b]0;owned\\x07 then \\x1b[2J cleared"
    assert escaped in canary["text"]
    assert f"[canary replica {canary_row['number']}] {escaped}" in logs["text"], logs["text"][-2000:]
    assert "canary says" not in by_number[1]["text"]  # the live replica's lines stay its own
    for text in (logs["text"], canary["text"]):
        assert not any(ch in text for ch in "\x1b\x07")

    # `mlportal service logs` prints the same, labelled and escaped.
    login(owner)
    printed = cli("service", "logs", "realtime", "-i", "churnpred", "--tail", "200")
    assert printed.code == 0, printed.err
    assert f"[canary replica {canary_row['number']}] {escaped}" in printed.out and "[replica 1] " in printed.out
    assert not any(ch in printed.out for ch in "\x1b\x07")
    assert owner_api.post("/api/v1/services/churnpred/abort/").status_code == 202
    _settled(owner_api)
