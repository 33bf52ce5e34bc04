"""POST /api/v1/services/create-realtime/: the lab's one-shot `service create realtime`, as far as
the request goes (register → manifest → image → service recorded; the build and the deploy are the
worker's, see test_lab_one_shot.py). A mistake in any step stores nothing."""
from __future__ import annotations

import pytest

from deployments.models import Environment, Service
from registry.models import Image, Manifest, Model
from tests.deployments.conftest import stored_files
from workspaces.models import Activity

pytestmark = pytest.mark.django_db


def test_it_registers_the_model_creates_manifest_and_image_and_records_the_service(owner_api, create_realtime):
    response = create_realtime(owner_api, "churnpred")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "churnpred" and body["status"] == "creating" and body["replicas"] == 1
    steps = {s["step"]: s for s in body["steps"]}
    assert list(steps) == ["register", "manifest", "image", "service"]
    model, manifest, image = Model.objects.get(), Manifest.objects.get(), Image.objects.get()
    assert steps["register"] == {**steps["register"], "id": str(model.pk), "ref": "model.pkl:1", "status": "succeeded"}
    assert steps["manifest"]["id"] == str(manifest.pk) and steps["manifest"]["ref"] == "churnpred:1"
    assert steps["image"]["id"] == str(image.pk) and steps["image"]["status"] == "queued"
    assert steps["service"]["status"] == "creating" and steps["service"]["id"] == body["id"]
    assert [s["url"] for s in body["steps"]] == [f"/models/{model.pk}/", f"/manifests/{manifest.pk}/",
                                                  f"/images/{image.pk}/", f"/services/{body['id']}/"]
    assert list(manifest.model_versions.all()) == [model] and image.manifest_id == manifest.pk
    assert body["image_id"] == str(image.pk) and body["scoring_url"].endswith("/api/v1/services/churnpred/score")
    verbs = set(Activity.objects.values_list("verb", flat=True))
    assert {"model.registered", "manifest.created", "image.created", "service.created"} <= verbs


def test_a_user_without_an_environment_gets_a_local_one_and_is_told(owner_api, create_realtime):
    body = create_realtime(owner_api, "churnpred").json()
    environment = Environment.objects.get()
    assert environment.name == "local" and environment.kind == "local" and environment.engine_url == ""
    assert body["environment"] == "local" and "created environment 'local'" in body["notice"]
    assert owner_api.get("/api/v1/environments/active/").json()["name"] == "local"
    # The second service goes to the same environment, without a notice.
    second = create_realtime(owner_api, "churnpred2").json()
    assert second["environment"] == "local" and "notice" not in second
    assert Environment.objects.count() == 1


def test_it_deploys_to_the_active_environment_or_the_one_named(owner_api, create_realtime):
    owner_api.post("/api/v1/environments/", {"name": "staging"}, format="json")
    owner_api.post("/api/v1/environments/", {"name": "production"}, format="json")
    refused = create_realtime(owner_api, "churnpred")
    assert refused.status_code == 400 and "Choose an environment" in refused.json()["error"]["message"]
    owner_api.post("/api/v1/environments/staging/activate/")
    assert create_realtime(owner_api, "one").json()["environment"] == "staging"
    assert create_realtime(owner_api, "two", environment="production").json()["environment"] == "production"


def test_the_model_name_defaults_to_the_file_name_and_a_second_upload_is_the_next_version(owner_api, create_realtime):
    create_realtime(owner_api, "one")
    create_realtime(owner_api, "two", model_name="churn-model")
    create_realtime(owner_api, "three")
    assert sorted(Model.objects.values_list("name", "version")) == [("churn-model", 1), ("model.pkl", 1), ("model.pkl", 2)]


def _nothing_stored(root) -> None:
    assert not Service.objects.exists() and not Image.objects.exists()
    assert not Manifest.objects.exists() and not Model.objects.exists()
    assert stored_files(root) == []


@pytest.mark.parametrize("fields, field, says", [
    ({"schema": b'{"input": {"input_df": {"internal": "not base64"}}}'}, "schema_file", "service_schema.json"),
    ({"score": b"def run(input_df):\n    return 1\n"}, "score_file", "init()"),
    ({"score": b"def init(:\n"}, "score_file", "syntax error"),
    ({"requirements": b"--index-url http://evil\n"}, "requirements_file", "pip option"),
    ({"runtime": "java"}, "runtime", "Unknown runtime"),
    ({"model_filename": "my model.pkl"}, "model_file", "may hold only"),
    ({"model": b""}, "model_file", "empty"),
    ({"model_name": "a/b"}, "model_name", "path separators"),
])
def test_a_mistake_in_any_step_answers_400_and_stores_nothing(owner_api, create_realtime, storage_root, fields, field, says):
    response = create_realtime(owner_api, "churnpred", **fields)
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert says in error["message"] and field in error["fields"], error
    _nothing_stored(storage_root)


@pytest.mark.parametrize("fields, field, says", [
    ({"replicas": 0}, "replicas", "at least 1"),
    ({"replicas": 11}, "replicas", "at most 10"),
    ({"replicas": "two"}, "replicas", "whole number"),
    ({"environment": "nowhere"}, "environment", "Unknown environment 'nowhere'"),
    ({"cpus": 0}, "cpus", "from 0.1"),
    ({"memory_mb": 10}, "memory_mb", "from 64"),
    ({"cpus": 256}, "cpus", "over the portal's maximum of 8 (MLPORTAL_SERVICE_MAX_CPUS)"),
    ({"memory_mb": 1024 * 1024}, "memory_mb", "over the portal's maximum of 16384 MB"),
])
def test_bad_service_settings_answer_400_naming_the_field(owner_api, create_realtime, storage_root, fields, field, says):
    response = create_realtime(owner_api, "churnpred", **fields)
    assert response.status_code == 400, response.json()
    assert says in response.json()["error"]["message"] and field in response.json()["error"]["fields"]
    _nothing_stored(storage_root)
    assert not Environment.objects.exists()  # not even the automatic 'local' one


def test_a_duplicate_service_name_answers_400_and_stores_nothing_more(owner_api, create_realtime, storage_root):
    create_realtime(owner_api, "churnpred")
    files = stored_files(storage_root)
    response = create_realtime(owner_api, "churnpred")
    assert response.status_code == 400 and "already" in response.json()["error"]["message"]
    assert "name" in response.json()["error"]["fields"]
    assert Service.objects.count() == 1 and Model.objects.count() == 1 and stored_files(storage_root) == files


def test_a_bad_service_name_answers_400(owner_api, create_realtime):
    response = create_realtime(owner_api, "Churn Pred")
    assert response.status_code == 400 and "name" in response.json()["error"]["fields"]


def test_a_missing_file_is_named(owner_api):
    response = owner_api.post("/api/v1/services/create-realtime/", {"name": "churnpred"}, format="multipart")
    assert response.status_code == 400 and "model_file" in response.json()["error"]["fields"]


def test_a_reader_may_not_create_a_service(reader_api, create_realtime, storage_root):
    response = create_realtime(reader_api, "churnpred", workspace="team")
    assert response.status_code == 403 and "contributor" in response.json()["error"]["message"]
    _nothing_stored(storage_root)
