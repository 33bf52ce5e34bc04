"""/api/v1/services/: creating from an image, lists, keys, usage, and who may do what. The rows
here are made by the one-shot create without a worker, so nothing is started."""
from __future__ import annotations

import pytest

from deployments.models import Service
from registry.models import Image

pytestmark = pytest.mark.django_db


@pytest.fixture
def service(owner_api, create_realtime):
    response = create_realtime(owner_api, "churnpred")
    assert response.status_code == 201, response.json()
    return response.json()


def test_deploying_an_image_that_is_not_built_answers_400_and_starts_nothing(owner_api, service):
    response = owner_api.post("/api/v1/services/", {"name": "second", "image": "churnpred:1"}, format="json")
    assert response.status_code == 400
    assert "not built yet (it is queued)" in response.json()["error"]["message"] and "image" in response.json()["error"]["fields"]
    Image.objects.update(status="failed", error="pip could not resolve pandas")
    failed = owner_api.post("/api/v1/services/", {"name": "second", "image": "churnpred:1"}, format="json")
    assert "failed to build (pip could not resolve pandas)" in failed.json()["error"]["message"]
    assert Service.objects.count() == 1


def test_deploying_an_unknown_image_or_environment_is_named(owner_api, service):
    Image.objects.update(status="succeeded", image_id="sha256:" + "0" * 64)
    unknown = owner_api.post("/api/v1/services/", {"name": "second", "image": "nope:3"}, format="json")
    assert unknown.status_code == 400 and "Unknown image 'nope:3'" in unknown.json()["error"]["message"]
    bad_env = owner_api.post("/api/v1/services/", {"name": "second", "image": "churnpred:1", "environment": "mars"}, format="json")
    assert bad_env.status_code == 400 and "Unknown environment 'mars'" in bad_env.json()["error"]["message"]
    assert "its environments are local" in bad_env.json()["error"]["message"]
    dup = owner_api.post("/api/v1/services/", {"name": "churnpred", "image": "churnpred:1"}, format="json")
    assert dup.status_code == 400 and "already" in dup.json()["error"]["message"]
    over = owner_api.post("/api/v1/services/", {"name": "second", "image": "churnpred:1", "replicas": 20}, format="json")
    assert over.status_code == 400 and "at most 10" in over.json()["error"]["message"]
    assert Service.objects.count() == 1


def test_a_service_is_found_by_id_or_name(owner_api, service):
    assert owner_api.get(f"/api/v1/services/{service['id']}/").json()["name"] == "churnpred"
    body = owner_api.get("/api/v1/services/churnpred/").json()
    assert body["id"] == service["id"] and body["containers"] == [] and body["events"]


def test_members_see_the_keys_and_only_through_the_keys_endpoint(owner_api, reader_api, service):
    row = Service.objects.get()
    assert reader_api.get("/api/v1/services/churnpred/keys/").json() == {"primary": row.primary_key, "secondary": row.secondary_key}
    assert row.primary_key != row.secondary_key and len(row.primary_key) >= 40
    text = owner_api.get("/api/v1/services/churnpred/").content.decode()
    assert row.primary_key not in text and row.secondary_key not in text and row.proxy_key not in text


def test_usage_holds_the_scoring_url_headers_sample_curl_and_cli(owner_api, service, churn):
    usage = owner_api.get("/api/v1/services/churnpred/usage/").json()
    assert usage["scoring_url"] == "http://testserver/api/v1/services/churnpred/score"
    assert usage["headers"] == {"Authorization": "Bearer <service-key>", "Content-Type": "application/json"}
    assert "-H 'Authorization: Bearer <service-key>'" in usage["curl"]
    assert set(usage["sample_body"]) == {"input_df"} and usage["sample_body"]["input_df"][0]["state"]
    assert usage["curl"].startswith("curl -X POST http://testserver/api/v1/services/churnpred/score")
    assert usage["cli"].startswith("mlportal service run realtime -i churnpred -d '{\"input_df\": [{")
    assert usage["container_url"] is None and usage["swagger_url"] is None  # no replica yet


def test_changes_are_refused_while_the_service_is_still_creating(owner_api, service):
    for path, body in (("update", {"image": "churnpred:1"}), ("scale", {"replicas": 2}), ("regenerate-key", {"key": "primary"})):
        response = owner_api.post(f"/api/v1/services/churnpred/{path}/", body, format="json")
        assert response.status_code in (400, 409), (path, response.json())
    busy = owner_api.post("/api/v1/services/churnpred/scale/", {"replicas": 2}, format="json")
    assert busy.status_code == 409 and "is creating: wait until it is healthy" in busy.json()["error"]["message"]


@pytest.mark.parametrize("path, body, field, says", [
    ("scale", {"replicas": 0}, "replicas", "at least 1"),
    ("scale", {}, "replicas", "how many replicas"),
    ("regenerate-key", {"key": "tertiary"}, "key", "'primary' or 'secondary'"),
    ("update", {}, "image", "Name the image"),
    ("update", {"image": "nope"}, "image", "Unknown image"),
    ("rollback", {}, "revision", "roll back to"),
    ("rollback", {"revision": 7}, "revision", "no revision 7"),
])
def test_bad_change_requests_answer_400_naming_the_field(owner_api, service, path, body, field, says):
    response = owner_api.post(f"/api/v1/services/churnpred/{path}/", body, format="json")
    assert response.status_code == 400, response.json()
    assert says in response.json()["error"]["message"] and field in response.json()["error"]["fields"]


def test_readers_get_403_naming_the_role_on_every_change(reader_api, service):
    for path, body in (("update", {"image": "churnpred:1"}), ("rollback", {"revision": 1}), ("scale", {"replicas": 2}),
                       ("regenerate-key", {"key": "primary"})):
        response = reader_api.post(f"/api/v1/services/churnpred/{path}/", body, format="json")
        assert response.status_code == 403 and "contributor" in response.json()["error"]["message"], path
    deleted = reader_api.delete("/api/v1/services/churnpred/")
    assert deleted.status_code == 403 and "owner" in deleted.json()["error"]["message"]


def test_a_contributor_may_not_delete_but_an_owner_may(contributor_api, owner_api, service):
    assert contributor_api.delete("/api/v1/services/churnpred/").status_code == 403
    response = owner_api.delete("/api/v1/services/churnpred/")
    assert response.status_code == 202 and response.json()["status"] == "deleting"


def test_outsiders_get_404_for_every_service_endpoint(outsider_api, service):
    for ref in ("churnpred", service["id"]):
        base = f"/api/v1/services/{ref}"
        for path in ("/", "/keys/", "/usage/", "/logs/", "/metrics/"):
            assert outsider_api.get(base + path).status_code == 404, path
        for path, body in (("/update/", {"image": "churnpred:1"}), ("/rollback/", {"revision": 1}),
                           ("/scale/", {"replicas": 2}), ("/regenerate-key/", {"key": "primary"})):
            assert outsider_api.post(base + path, body, format="json").status_code == 404, path
        assert outsider_api.delete(base + "/").status_code == 404
    assert outsider_api.get("/api/v1/services/").json()["count"] == 0


def test_the_list_pages_searches_orders_and_filters(owner_api, create_realtime, service):
    owner_api.post("/api/v1/environments/", {"name": "staging"}, format="json")
    create_realtime(owner_api, "fraud", environment="staging")
    create_realtime(owner_api, "upsell")
    Service.objects.filter(name="upsell").update(status="failed")
    names = lambda query: [s["name"] for s in owner_api.get(f"/api/v1/services/{query}").json()["results"]]  # noqa: E731
    assert names("?ordering=-name") == ["upsell", "fraud", "churnpred"]
    assert names("?search=fra") == ["fraud"]
    assert names("?status=failed") == ["upsell"]
    assert names("?environment=staging") == ["fraud"]
    page = owner_api.get("/api/v1/services/?page_size=2").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]


def test_an_environment_with_services_cannot_be_deleted_and_says_which(owner_api, service):
    response = owner_api.delete("/api/v1/environments/local/")
    assert response.status_code == 409 and "runs service churnpred" in response.json()["error"]["message"]
    assert owner_api.get("/api/v1/environments/local/").json()["services"] == [
        {"id": service["id"], "name": "churnpred", "status": "creating"}]


def test_deleting_a_workspace_takes_its_services_and_environments(owner, workspace, service):
    from deployments.models import Environment
    from workspaces.services import workspace_delete

    workspace_delete(workspace=workspace, user=owner)
    assert not Service.objects.exists() and not Environment.objects.exists() and not Image.objects.exists()


def test_an_environment_running_services_keeps_its_engine_and_address_but_takes_a_description(owner_api, service):
    moved = owner_api.patch("/api/v1/environments/local/", {"engine_url": "tcp://10.0.0.5:2375"}, format="json")
    assert moved.status_code == 409
    assert "runs service churnpred: its engine cannot change" in moved.json()["error"]["message"]
    readdressed = owner_api.patch("/api/v1/environments/local/", {"publish_address": "10.0.0.7"}, format="json")
    assert readdressed.status_code == 409 and "publish address" in readdressed.json()["error"]["message"]
    described = owner_api.patch("/api/v1/environments/local/", {"description": "the workers' engine",
                                                                 "publish_address": "127.0.0.1"}, format="json")
    assert described.status_code == 200 and described.json()["description"] == "the workers' engine"
    assert described.json()["engine_url"] == "" and described.json()["publish_address"] == "127.0.0.1"
