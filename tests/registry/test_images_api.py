"""/api/v1/images/ without building: create (201 queued, enqueued on commit), lookups, the log
endpoint's offsets, usage, roles and outsiders. The real builds are in test_image_build.py."""
import pytest

from registry import selectors, services, worker
from registry.models import Image
from tests.registry.conftest import REQUIREMENTS, SAMPLE_REQUEST, SCORE, upload
from workspaces.models import Activity

pytestmark = pytest.mark.django_db


@pytest.fixture
def manifest(owner, workspace, churn_schema):
    model = services.model_register_upload(workspace=workspace, name="model.pkl", fileobj=upload("model.pkl", b"m"),
                                           filename="model.pkl", user=owner)
    return services.manifest_create(workspace=workspace, name="churnpred", models=[model], score=SCORE,
                                    schema=churn_schema, requirements=REQUIREMENTS, user=owner)


def test_creating_an_image_queues_its_build_after_commit(owner_api, manifest, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = owner_api.post("/api/v1/images/", {"manifest": "churnpred:1"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "queued" and body["tag"] == "mlportal/team/churnpred:1" and body["manifest"] == "churnpred:1"
    assert body["labels"]["mlportal.manifest_hash"] == manifest.content_hash and body["labels"]["mlportal.models"] == "model.pkl:1"
    assert len(callbacks) == 1
    assert Activity.objects.filter(verb="image.created", target_id=body["id"]).exists()


def test_image_versions_count_per_name_and_a_name_can_be_given(owner_api, manifest):
    tags = [owner_api.post("/api/v1/images/", {"manifest": "churnpred"}, format="json").json()["tag"] for _ in range(2)]
    named = owner_api.post("/api/v1/images/", {"manifest": str(manifest.pk), "name": "churn-canary"}, format="json").json()
    assert tags == ["mlportal/team/churnpred:1", "mlportal/team/churnpred:2"] and named["tag"] == "mlportal/team/churn-canary:1"
    bad = owner_api.post("/api/v1/images/", {"manifest": "churnpred", "name": "Bad Name"}, format="json")
    assert bad.status_code == 400 and "image name" in bad.json()["error"]["message"]


def test_an_unknown_manifest_is_a_400_naming_it(owner_api, manifest):
    response = owner_api.post("/api/v1/images/", {"manifest": "churnpred:5"}, format="json")
    assert response.status_code == 400 and "churnpred:5" in response.json()["error"]["message"]
    assert owner_api.post("/api/v1/images/", {}, format="json").status_code == 400
    assert not Image.objects.exists()


def test_an_image_is_found_by_id_name_name_version_and_tag(owner_api, owner, manifest):
    first = services.image_create(manifest=manifest, user=owner)
    second = services.image_create(manifest=manifest, user=owner)
    assert owner_api.get(f"/api/v1/images/{first.pk}/").json()["version"] == 1
    assert owner_api.get("/api/v1/images/churnpred/").json()["id"] == str(second.pk)
    assert owner_api.get("/api/v1/images/churnpred:1/").json()["id"] == str(first.pk)
    assert owner_api.get("/api/v1/images/mlportal/team/churnpred:1/").json()["id"] == str(first.pk)
    assert owner_api.get("/api/v1/images/mlportal/team/churnpred:1/log/").status_code == 200
    assert owner_api.get("/api/v1/images/?tag=mlportal/team/churnpred:2").json()["results"][0]["id"] == str(second.pk)


def test_the_log_endpoint_serves_the_log_from_an_offset_until_done(owner_api, owner, manifest, settings):
    image = services.image_create(manifest=manifest, user=owner)
    Image.objects.filter(pk=image.pk).update(status="building")
    log = worker.BuildLog(image)
    for i in range(5):
        log(f"line {i} <b>")
    log.flush()
    first = owner_api.get(f"/api/v1/images/{image.pk}/log/?offset=0").json()
    assert first["text"] == "".join(f"line {i} <b>\n" for i in range(5)) and not first["done"] and first["status"] == "building"
    log("line 5")
    log.flush()
    # Offsets count chunks (core.logs): the first line went out at once as chunk 1.
    assert owner_api.get(f"/api/v1/images/{image.pk}/log/?offset=1").json()["text"].startswith("line 1 <b>\n")
    middle = owner_api.get(f"/api/v1/images/{image.pk}/log/?offset={first['offset']}").json()
    assert middle["text"] == "line 5\n" and middle["offset"] > first["offset"]
    Image.objects.filter(pk=image.pk).update(status="succeeded")
    end = owner_api.get(f"/api/v1/images/{image.pk}/log/?offset={middle['offset']}").json()
    assert end == {"text": "", "offset": middle["offset"], "done": True, "status": "succeeded"}
    assert owner_api.get(f"/api/v1/images/{image.pk}/log/?offset=x").status_code == 400


def test_the_build_log_is_capped_with_a_note(owner, manifest, settings):
    settings.MLPORTAL_LOG_MAX_BYTES = 1024
    image = services.image_create(manifest=manifest, user=owner)
    log = worker.BuildLog(image)
    for i in range(200):
        log(f"pip says line {i}")
    log.flush()
    text = selectors.image_log(image, 0)["text"]
    assert len(text) <= 1024 + 100 and text.rstrip().endswith("the build goes on]")


def test_usage_gives_the_run_line_the_curl_and_the_example_body(owner_api, owner, manifest):
    image = services.image_create(manifest=manifest, user=owner)
    usage = owner_api.get(f"/api/v1/images/{image.pk}/usage/").json()
    assert set(usage) == {"docker_run", "curl", "sample_body", "scoring_path"}
    assert usage["sample_body"] == SAMPLE_REQUEST and usage["scoring_path"] == "/score"
    assert "mlportal/team/churnpred:1" in usage["docker_run"] and "'Authorization: Bearer " in usage["curl"]


def test_readers_read_but_cannot_create_or_delete_and_outsiders_get_404(owner, owner_api, reader_api, outsider_api, manifest):
    image = services.image_create(manifest=manifest, user=owner)
    assert reader_api.get(f"/api/v1/images/{image.pk}/").status_code == 200
    refused = reader_api.post("/api/v1/images/", {"manifest": "churnpred"}, format="json")
    assert refused.status_code == 403 and "contributor" in refused.json()["error"]["message"]
    assert reader_api.delete(f"/api/v1/images/{image.pk}/").status_code == 403
    for path in ("", "log/", "usage/"):
        assert outsider_api.get(f"/api/v1/images/{image.pk}/{path}").status_code == 404
    assert outsider_api.delete(f"/api/v1/images/{image.pk}/").status_code == 404
    assert outsider_api.post("/api/v1/images/", {"manifest": str(manifest.pk)}, format="json").status_code == 400
    assert outsider_api.get("/api/v1/images/").json()["count"] == 0


def test_the_list_filters_by_status_searches_and_orders(owner_api, owner, manifest):
    first = services.image_create(manifest=manifest, user=owner)
    services.image_create(manifest=manifest, user=owner, name="other")
    Image.objects.filter(pk=first.pk).update(status="failed")
    assert [i["name"] for i in owner_api.get("/api/v1/images/?status=failed").json()["results"]] == ["churnpred"]
    assert [i["name"] for i in owner_api.get("/api/v1/images/?search=oth").json()["results"]] == ["other"]
    assert [i["name"] for i in owner_api.get("/api/v1/images/?ordering=name").json()["results"]] == ["churnpred", "other"]


def test_an_image_no_service_runs_has_no_users(owner, manifest):
    image = services.image_create(manifest=manifest, user=owner)
    assert selectors.services_using_images([image.pk]) == []


def test_deleting_an_image_a_service_runs_is_refused_naming_the_service(owner_api, page_client, owner, workspace, manifest):
    from deployments.models import Environment, Service

    image = services.image_create(manifest=manifest, user=owner)
    environment = Environment.objects.create(workspace=workspace, name="local")
    service = Service.objects.create(workspace=workspace, name="churnsvc", environment=environment, image=image,
                                     status="healthy", primary_key="a", secondary_key="b", proxy_key="c")
    refused = owner_api.delete(f"/api/v1/images/{image.pk}/")
    assert refused.status_code == 409 and "used by service churnsvc" in refused.json()["error"]["message"]
    model_page = page_client(owner).get("/models/model.pkl/").content.decode()
    assert f"/services/{service.pk}/" in model_page and "churnsvc" in model_page
    # A deleted service no longer uses the image, but its row, until the worker removes it, still holds it.
    Service.objects.filter(pk=service.pk).update(status="deleted")
    lingering = owner_api.delete(f"/api/v1/images/{image.pk}/")
    assert lingering.status_code == 409 and "being removed" in lingering.json()["error"]["message"]
    Service.objects.filter(pk=service.pk).delete()
    assert owner_api.delete(f"/api/v1/images/{image.pk}/").status_code == 204


def test_deleting_a_workspace_takes_its_models_manifests_and_images(owner, workspace, manifest):
    from workspaces.services import workspace_delete

    services.image_create(manifest=manifest, user=owner)
    workspace_delete(workspace=workspace, user=owner)
    assert not Image.objects.exists()
