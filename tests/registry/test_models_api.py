"""/api/v1/models/: register by upload, versions per name, lookup by id / name / name:version,
edit, download, delete, and every way a user can get it wrong."""
import hashlib
import json

import pytest

from registry.models import Model
from tests.registry.conftest import stored_files, upload
from workspaces.models import Activity

pytestmark = pytest.mark.django_db


def test_an_upload_registers_version_1_with_its_checksum_size_and_an_honest_framework(owner_api, register_model, storage_root):
    content = b"\x80\x04pickle-bytes" * 100
    response = register_model(owner_api, content=content, description="DTree", tags=json.dumps({"stage": "test", "auc": 0.91}))
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "model.pkl" and body["version"] == 1 and body["ref"] == "model.pkl:1"
    assert body["sha256"] == hashlib.sha256(content).hexdigest() and body["size"] == len(content)
    # A .pkl name is no evidence: this damaged pickle names no sklearn class, so it is not scikit-learn.
    assert body["framework"] == "unknown" and body["file_name"] == "model.pkl"
    assert body["scan"]["verdict"] == "not_scanned" and body["scan"]["reason_code"] in ("damaged", "truncated")
    assert body["tags"] == {"stage": "test", "auc": "0.91"} and body["description"] == "DTree"
    assert body["workspace"] == "team" and body["created_by"] == "olivia"
    [stored] = stored_files(storage_root)
    assert (storage_root / stored).read_bytes() == content
    assert Activity.objects.filter(verb="model.registered", target_id=body["id"]).exists()


def test_registering_the_same_name_again_adds_the_next_version(owner_api, register_model):
    versions = [register_model(owner_api, content=f"v{i}".encode()).json()["version"] for i in range(3)]
    assert versions == [1, 2, 3]
    assert register_model(owner_api, name="other.pkl").json()["version"] == 1


def test_a_declared_framework_names_a_file_without_pickles_and_an_unknown_one_is_refused(owner_api, register_model):
    assert register_model(owner_api, name="net.bin", framework="pytorch").json()["framework"] == "pytorch"
    assert register_model(owner_api, name="net2.bin").json()["framework"] == "unknown"
    # A pickle's label comes from what it references, whatever is declared.
    assert register_model(owner_api, name="p.pkl", content=__import__("pickle").dumps({"a": 1}),
                          framework="xgboost").json()["framework"] == "unknown"
    bad = register_model(owner_api, framework="sklearn-ish")
    assert bad.status_code == 400 and "Unknown framework" in bad.json()["error"]["message"]


def test_a_model_is_found_by_id_by_name_as_its_latest_and_by_name_colon_version(owner_api, register_model):
    first = register_model(owner_api, content=b"one").json()
    second = register_model(owner_api, content=b"two").json()
    assert owner_api.get(f"/api/v1/models/{first['id']}/").json()["version"] == 1
    assert owner_api.get("/api/v1/models/model.pkl/").json()["id"] == second["id"]
    assert owner_api.get("/api/v1/models/model.pkl:1/").json()["id"] == first["id"]
    missing = owner_api.get("/api/v1/models/model.pkl:9/")
    assert missing.status_code == 404 and "model.pkl:9" in missing.json()["error"]["message"]


def test_the_download_streams_the_exact_bytes_as_an_attachment(owner_api, reader_api, register_model):
    content = bytes(range(256)) * 50
    register_model(owner_api, content=content)
    response = reader_api.get("/api/v1/models/model.pkl:1/download/")
    assert response.status_code == 200 and response.streaming
    assert b"".join(response.streaming_content) == content
    assert 'attachment; filename="model.pkl"' in response["Content-Disposition"]
    assert response["X-Checksum-SHA256"] == hashlib.sha256(content).hexdigest()


def test_description_and_tags_are_editable_but_nothing_else(owner_api, register_model):
    register_model(owner_api)
    changed = owner_api.patch("/api/v1/models/model.pkl/", {"description": "better", "tags": {"stage": "prod"}}, format="json")
    assert changed.status_code == 200 and changed.json()["description"] == "better" and changed.json()["tags"] == {"stage": "prod"}
    refused = owner_api.patch("/api/v1/models/model.pkl/", {"sha256": "0" * 64}, format="json")
    assert refused.status_code == 400 and "Only description and tags" in refused.json()["error"]["message"]
    bad_tags = owner_api.patch("/api/v1/models/model.pkl/", {"tags": ["a"]}, format="json")
    assert bad_tags.status_code == 400 and "JSON object" in bad_tags.json()["error"]["message"]
    assert Activity.objects.filter(verb="model.updated").count() == 1


def test_list_filters_searches_orders_and_paginates(owner_api, register_model):
    for name in ("alpha.pkl", "beta.onnx", "gamma.pkl"):
        register_model(owner_api, name=name, filename=name, **({"framework": "onnx"} if name.endswith(".onnx") else {}))
    register_model(owner_api, name="alpha.pkl", filename="alpha.pkl")
    listing = owner_api.get("/api/v1/models/?page_size=2&ordering=name").json()
    assert listing["count"] == 4 and len(listing["results"]) == 2 and listing["next"]
    assert [m["ref"] for m in listing["results"]] == ["alpha.pkl:1", "alpha.pkl:2"] or [m["name"] for m in listing["results"]] == ["alpha.pkl", "alpha.pkl"]
    assert {m["name"] for m in owner_api.get("/api/v1/models/?framework=onnx").json()["results"]} == {"beta.onnx"}
    assert {m["name"] for m in owner_api.get("/api/v1/models/?search=gam").json()["results"]} == {"gamma.pkl"}
    assert [m["version"] for m in owner_api.get("/api/v1/models/?name=alpha.pkl&ordering=-version").json()["results"]] == [2, 1]


@pytest.mark.parametrize("name, problem", [
    ("../evil.pkl", "path separators"),
    ("dir\\model.pkl", "path separators"),
    ("model\n.pkl", "control characters"),
    ("model\x00.pkl", "control characters"),
    ("model:1", "letters, digits"),
    ("", "is needed"),
])
def test_bad_model_names_are_refused_and_nothing_is_stored(owner_api, register_model, storage_root, name, problem):
    response = register_model(owner_api, name=name, filename="model.pkl")
    assert response.status_code == 400
    assert problem in response.json()["error"]["message"]
    assert not Model.objects.exists() and stored_files(storage_root) == []


def test_an_empty_upload_is_refused_and_nothing_is_stored(owner_api, register_model, storage_root):
    response = register_model(owner_api, content=b"")
    assert response.status_code == 400 and "empty" in response.json()["error"]["message"]
    assert not Model.objects.exists() and stored_files(storage_root) == []


def test_an_upload_over_the_cap_is_refused_and_nothing_is_stored(owner_api, register_model, storage_root, settings):
    settings.MLPORTAL_MAX_UPLOAD_BYTES = 4096
    response = register_model(owner_api, content=b"x" * 8192)
    assert response.status_code == 413 and "limit of 4096 bytes" in response.json()["error"]["message"]
    assert not Model.objects.exists() and stored_files(storage_root) == []


def test_a_file_name_with_a_space_is_refused_with_what_to_change(owner_api, register_model):
    response = register_model(owner_api, name="m", filename="my model.pkl")
    assert response.status_code == 400 and "file name 'my model.pkl'" in response.json()["error"]["message"]


def test_a_request_with_neither_file_nor_run_says_what_to_send(owner_api):
    response = owner_api.post("/api/v1/models/", {"name": "model.pkl"}, format="json")
    assert response.status_code == 400 and "Send a model file" in response.json()["error"]["message"]


def test_bad_tags_are_refused(owner_api, register_model):
    assert register_model(owner_api, tags="{not json").status_code == 400
    assert register_model(owner_api, tags=json.dumps({"k": {"nested": 1}})).status_code == 400
    assert not Model.objects.exists()


def test_a_reader_cannot_register_edit_or_delete(owner_api, reader_api, register_model):
    register_model(owner_api)
    refused = register_model(reader_api)
    assert refused.status_code == 403 and "contributor" in refused.json()["error"]["message"]
    assert reader_api.patch("/api/v1/models/model.pkl/", {"description": "x"}, format="json").status_code == 403
    assert reader_api.delete("/api/v1/models/model.pkl/").status_code == 403
    assert reader_api.get("/api/v1/models/model.pkl/").status_code == 200


def test_a_contributor_registers_but_only_an_owner_deletes(owner_api, contributor_api, register_model):
    assert register_model(contributor_api).status_code == 201
    refused = contributor_api.delete("/api/v1/models/model.pkl:1/")
    assert refused.status_code == 403 and "owner" in refused.json()["error"]["message"]


def test_the_outsider_gets_404_for_a_model_of_another_workspace(owner_api, outsider_api, register_model):
    model_id = register_model(owner_api).json()["id"]
    for path in (f"/api/v1/models/{model_id}/", f"/api/v1/models/{model_id}/download/", "/api/v1/models/model.pkl/"):
        assert outsider_api.get(path).status_code == 404
    assert outsider_api.patch(f"/api/v1/models/{model_id}/", {"description": "x"}, format="json").status_code == 404
    assert outsider_api.delete(f"/api/v1/models/{model_id}/").status_code == 404
    assert outsider_api.get("/api/v1/models/").json()["count"] == 0


def test_the_outsider_cannot_register_into_a_foreign_workspace(outsider_api, register_model, workspace):
    response = register_model(outsider_api, workspace="team")
    assert response.status_code == 404


def test_deleting_a_version_removes_its_file_and_records_it(owner_api, register_model, storage_root, django_capture_on_commit_callbacks):
    register_model(owner_api)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_api.delete("/api/v1/models/model.pkl:1/")
    assert response.status_code == 204
    assert stored_files(storage_root) == [] and not Model.objects.exists()
    assert Activity.objects.filter(verb="model.deleted").exists()


def test_a_name_with_a_dot_is_not_taken_for_a_format_suffix(owner_api, register_model):
    register_model(owner_api)
    assert owner_api.get("/api/v1/models/model.pkl").json()["ref"] == "model.pkl:1"
