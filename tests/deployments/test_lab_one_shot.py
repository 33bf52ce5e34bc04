"""The lab's second half for real: `service create realtime -n churnpred --model-file model.pkl
-f score.py -r python -s service_schema.json` through the API, the worker and Docker, then a
scoring call through the portal that returns "0"; keys; the container's own endpoint."""
from __future__ import annotations

import json

import pytest
import sklearn
from rest_framework.test import APIClient

from deployments.models import Service
from tests.deployments.conftest import SAMPLE_REQUEST, call_container, score, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def test_the_one_shot_create_builds_deploys_and_scores_0_through_the_portal(deploy_worker, owner_api, create_realtime):
    # The lab's line passes no requirements file: the build reads what model.pkl and score.py import.
    created = create_realtime(owner_api, "churnpred", requirements=None)
    assert created.status_code == 201, created.json()
    service = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    assert service["status"] == "healthy", service["error"] + json.dumps(service["events"], indent=1)
    assert [s["status"] for s in service["steps"]] == ["succeeded", "succeeded", "succeeded", "healthy"]
    image_id = next(s["id"] for s in service["steps"] if s["step"] == "image")
    build_log = owner_api.get(f"/api/v1/images/{image_id}/log/").json()["text"]
    assert f"adding requirement scikit-learn=={sklearn.__version__}: imported by model.pkl" in build_log, build_log[-3000:]
    assert len(service["containers"]) == 1 and service["containers"][0]["ready"] is True
    assert service["containers"][0]["state"] == "running" and service["containers"][0]["host"] == "127.0.0.1"
    assert [r["number"] for r in service["revisions"]] == [1] and service["revisions"][0]["image"] == "churnpred:1"

    keys = owner_api.get("/api/v1/services/churnpred/keys/").json()
    anonymous = APIClient()
    answer = score(anonymous, "churnpred", SAMPLE_REQUEST, key=keys["primary"])
    assert answer.status_code == 200, answer.content
    assert answer.json() == "0" and answer["X-MLPortal-Replica"] == "1"
    assert score(anonymous, service["id"], SAMPLE_REQUEST, key=keys["secondary"]).json() == "0"

    # The container's own endpoint (the fast path) answers the same with the same keys.
    replica = service["containers"][0]
    assert call_container(replica["host"], replica["port"], "/score", SAMPLE_REQUEST, key=keys["primary"]) == (200, "0")
    usage = owner_api.get("/api/v1/services/churnpred/usage/").json()
    assert usage["container_url"] == f"http://127.0.0.1:{replica['port']}/score"
    status, swagger = call_container(replica["host"], replica["port"], "/swagger.json", method="GET")
    assert status == 200 and "/score" in json.dumps(swagger) and usage["swagger_url"].endswith("/swagger.json")


def test_scoring_needs_a_service_key_and_either_key_works(deploy_worker, owner_api, create_realtime):
    create_realtime(owner_api, "churnpred")
    wait_for(owner_api, "churnpred", ("healthy", "failed"))
    keys = owner_api.get("/api/v1/services/churnpred/keys/").json()
    client = APIClient()
    missing = score(client, "churnpred", SAMPLE_REQUEST)
    assert missing.status_code == 401 and "needs a key" in missing.json()["error"]["message"]
    assert missing["WWW-Authenticate"].startswith("Bearer")
    wrong = score(client, "churnpred", SAMPLE_REQUEST, key="not-the-key")
    assert wrong.status_code == 401 and "accepts this key" in wrong.json()["error"]["message"]
    basic = score(client, "churnpred", SAMPLE_REQUEST, headers={"HTTP_AUTHORIZATION": "Basic abc"})
    assert basic.status_code == 401
    # A user's API token is not a service key.
    token = owner_api._credentials["HTTP_AUTHORIZATION"].split()[1]
    assert score(client, "churnpred", SAMPLE_REQUEST, key=token).status_code == 401
    assert score(client, "churnpred", SAMPLE_REQUEST, key=keys["secondary"]).json() == "0"
    # An unknown service answers like a wrong key: the proxy does not tell which names exist.
    assert score(client, "nosuch", SAMPLE_REQUEST, key=keys["primary"]).status_code == 401


def test_a_regenerated_primary_key_replaces_the_old_one_without_downtime(deploy_worker, owner_api, create_realtime):
    create_realtime(owner_api, "churnpred")
    before = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    old = owner_api.get("/api/v1/services/churnpred/keys/").json()
    client = APIClient()
    response = owner_api.post("/api/v1/services/churnpred/regenerate-key/", {"key": "primary"}, format="json")
    assert response.status_code == 202 and response.json()["status"] == "updating"
    new = owner_api.get("/api/v1/services/churnpred/keys/").json()
    assert new["primary"] != old["primary"] and new["secondary"] == old["secondary"]
    # The portal takes the new key at once and refuses the old one, even while the containers restart.
    assert score(client, "churnpred", SAMPLE_REQUEST, key=old["primary"]).status_code == 401
    assert score(client, "churnpred", SAMPLE_REQUEST, key=new["primary"]).json() == "0"
    after = wait_for(owner_api, "churnpred", ("healthy", "unhealthy", "failed"))
    assert after["status"] == "healthy" and after["last_update_error"] == ""
    assert after["containers"][0]["container_id"] != before["containers"][0]["container_id"]
    assert [r["number"] for r in after["revisions"]] == [1]  # same image: no new revision
    replica = after["containers"][0]
    assert call_container(replica["host"], replica["port"], "/score", SAMPLE_REQUEST, key=old["primary"])[0] == 401
    assert call_container(replica["host"], replica["port"], "/score", SAMPLE_REQUEST, key=new["primary"]) == (200, "0")
    assert score(client, "churnpred", SAMPLE_REQUEST, key=new["secondary"]).json() == "0"
    old_container = before["containers"][0]["container_id"]
    from compute.containers import container_state

    assert container_state(old_container) is None  # the old replica was stopped and removed


def test_a_body_that_breaks_the_schema_gets_the_containers_400_naming_the_field(deploy_worker, owner_api, create_realtime):
    create_realtime(owner_api, "churnpred")
    wait_for(owner_api, "churnpred", ("healthy", "failed"))
    key = owner_api.get("/api/v1/services/churnpred/keys/").json()["primary"]
    record = dict(SAMPLE_REQUEST["input_df"][0], age="twelve")
    response = score(APIClient(), "churnpred", {"input_df": [record]}, key=key)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and "age" in error["message"]
    not_json = score(APIClient(), "churnpred", b"{not json", key=key)
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"


def test_a_body_over_the_cap_answers_413(deploy_worker, owner_api, create_realtime, settings):
    create_realtime(owner_api, "churnpred")
    wait_for(owner_api, "churnpred", ("healthy", "failed"))
    key = owner_api.get("/api/v1/services/churnpred/keys/").json()["primary"]
    settings.MLPORTAL_MAX_BODY_BYTES = 4096
    big = {"input_df": [SAMPLE_REQUEST["input_df"][0]] * 40}
    response = score(APIClient(), "churnpred", big, key=key)
    assert response.status_code == 413 and "over the limit of 4096 bytes" in response.json()["error"]["message"]


def test_logs_and_metrics_come_from_the_containers(deploy_worker, owner_api, create_realtime):
    create_realtime(owner_api, "churnpred")
    wait_for(owner_api, "churnpred", ("healthy", "failed"))
    key = owner_api.get("/api/v1/services/churnpred/keys/").json()["primary"]
    for _ in range(3):
        assert score(APIClient(), "churnpred", SAMPLE_REQUEST, key=key).status_code == 200
    logs = owner_api.get("/api/v1/services/churnpred/logs/?tail=200").json()
    assert logs["replicas"][0]["replica"] == 1 and "[replica 1]" in logs["text"]
    assert "POST /score" in logs["text"]  # the scoring server's access log
    assert owner_api.get("/api/v1/services/churnpred/logs/?tail=0").status_code == 400
    live = owner_api.get("/api/v1/services/churnpred/metrics/?live=1").json()  # asked of the container now
    assert live["live"] and live["requests"] >= 3 and live["by_code"].get("200", 0) >= 3
    # The default read is the snapshot the worker side takes (the deploy took one; the reconciler each sweep).
    from deployments import replica_metrics

    assert replica_metrics.record_service(Service.objects.get().pk) == 1  # the reconciler's step
    metrics = owner_api.get("/api/v1/services/churnpred/metrics/").json()
    assert metrics["requests"] >= 3 and metrics["by_code"].get("200", 0) >= 3 and "s ago" in metrics["note"]
    assert metrics["mean_latency_ms"] > 0 and metrics["replicas"][0]["error"] is None
    assert Service.objects.get().status == "healthy"
