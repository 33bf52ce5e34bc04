"""/api/v1/manifests/: bundles of model versions + score.py + schema + requirements, checked
without running anything, immutable, versioned by name, with a content hash."""
import hashlib
import json

import pytest

from registry.models import Manifest
from tests.registry.conftest import REQUIREMENTS, SCORE, stored_files
from workspaces.models import Activity

pytestmark = pytest.mark.django_db


@pytest.fixture
def model_pkl(owner_api, register_model):
    return register_model(owner_api, content=b"model bytes").json()


def test_a_manifest_freezes_models_and_files_with_a_content_hash(owner_api, model_pkl, create_manifest, churn_schema):
    response = create_manifest(owner_api)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "churnpred" and body["version"] == 1 and body["runtime"] == "python"
    assert [m["ref"] for m in body["models"]] == ["model.pkl:1"]
    assert body["files"]["score.py"]["sha256"] == hashlib.sha256(SCORE).hexdigest()
    assert set(body["files"]) == {"score.py", "service_schema.json", "requirements.txt"}
    assert body["requirements"] == ["numpy>=1.26", "pandas>=2.2", "scikit-learn>=1.5"]
    assert len(body["content_hash"]) == 64
    assert Activity.objects.filter(verb="manifest.created", target_id=body["id"]).exists()
    got = owner_api.get(f"/api/v1/manifests/{body['id']}/files/score.py")
    assert got.content == SCORE, got.content
    schema = owner_api.get("/api/v1/manifests/churnpred:1/files/service_schema.json")
    assert schema["Content-Type"] == "application/json" and schema.content == churn_schema


def test_the_same_content_gives_the_same_hash_and_a_new_model_a_new_one(owner_api, register_model, model_pkl, create_manifest):
    first = create_manifest(owner_api).json()
    second = create_manifest(owner_api).json()
    assert second["version"] == 2 and second["content_hash"] == first["content_hash"]
    register_model(owner_api, content=b"retrained")
    third = create_manifest(owner_api, models=["model.pkl:2"]).json()
    assert third["content_hash"] != first["content_hash"]
    changed_score = create_manifest(owner_api, score=SCORE + b"\n# v2\n").json()
    assert changed_score["content_hash"] != first["content_hash"]


def test_a_manifest_is_found_by_name_as_its_latest_and_by_name_colon_version(owner_api, model_pkl, create_manifest):
    first = create_manifest(owner_api).json()
    second = create_manifest(owner_api).json()
    assert owner_api.get("/api/v1/manifests/churnpred/").json()["id"] == second["id"]
    assert owner_api.get("/api/v1/manifests/churnpred:1/").json()["id"] == first["id"]
    assert owner_api.get("/api/v1/manifests/churnpred/files/nothing.txt").status_code == 404


def test_a_manifest_is_immutable(owner_api, model_pkl, create_manifest):
    create_manifest(owner_api)
    assert owner_api.patch("/api/v1/manifests/churnpred/", {"name": "x"}, format="json").status_code == 405
    assert owner_api.put("/api/v1/manifests/churnpred/", {"name": "x"}, format="json").status_code == 405


def test_requirements_are_optional(owner_api, model_pkl, create_manifest):
    body = create_manifest(owner_api, requirements=None).json()
    assert body["requirements"] == [] and "requirements.txt" not in body["files"]


BAD_MANIFESTS = [
    ({"score": b"def init(:\n    pass\n"}, "score.py has a syntax error at line 1"),
    ({"score": b"def init():\n    pass\n"}, "does not define run()"),
    ({"score": b"class X:\n    def init(self): pass\n    def run(self, x): pass\n"}, "does not define init() and run()"),
    ({"score": b""}, "score.py is empty"),
    ({"schema": b"{not json"}, "service_schema.json: the schema file is not valid JSON"),
    ({"schema": json.dumps({"inputs": {}}).encode()}, "the schema has no inputs"),
    ({"requirements": b"--index-url https://evil.example/simple\npandas\n"}, "is a pip option"),
    ({"requirements": b"pandas @ http://evil.example/pandas.whl\n"}, "points at a URL or path"),
    ({"requirements": b"pandas; sys_platform == 'linux'\n"}, "environment marker"),
    ({"requirements": b"pandas==2.2\rnumpy\n"}, "control characters"),
    ({"requirements": b"numpy\npandas=>2\n"}, "line 2: 'pandas=>2' is not a valid requirement"),
    ({"name": "Bad/Name"}, "path separators"),
    ({"name": "UPPER"}, "lowercase letters"),
    ({"models": ["model.pkl:7"]}, "Unknown model 'model.pkl:7'"),
    ({"models": []}, "at least one model version"),
    ({"runtime": "spark-py"}, "Unknown runtime"),
]


@pytest.mark.parametrize("change, message", BAD_MANIFESTS, ids=[m for _, m in BAD_MANIFESTS])
def test_a_bad_manifest_is_refused_naming_the_problem_and_nothing_is_stored(
        owner_api, model_pkl, create_manifest, storage_root, change, message):
    before = stored_files(storage_root)
    response = create_manifest(owner_api, **change)
    assert response.status_code == 400, response.json()
    assert message in response.json()["error"]["message"]
    assert not Manifest.objects.exists() and stored_files(storage_root) == before


def test_two_models_with_the_same_file_name_are_refused(owner_api, register_model, model_pkl, create_manifest):
    register_model(owner_api, name="other", filename="model.pkl")
    response = create_manifest(owner_api, models=["model.pkl:1", "other:1"])
    assert response.status_code == 400
    assert "both have the file name 'model.pkl'" in response.json()["error"]["message"]


def test_a_model_of_another_workspace_is_an_unknown_model(owner_api, outsider_api, register_model, create_manifest):
    foreign = register_model(outsider_api).json()
    register_model(owner_api)
    response = create_manifest(owner_api, models=[foreign["id"]])
    assert response.status_code == 400 and "Unknown model" in response.json()["error"]["message"]


def test_deleting_a_model_version_a_manifest_uses_is_refused_naming_the_manifest(owner_api, model_pkl, create_manifest):
    create_manifest(owner_api)
    response = owner_api.delete("/api/v1/models/model.pkl:1/")
    assert response.status_code == 409
    assert "churnpred:1" in response.json()["error"]["message"]
    assert owner_api.delete("/api/v1/manifests/churnpred:1/").status_code == 204
    assert owner_api.delete("/api/v1/models/model.pkl:1/").status_code == 204
    assert Activity.objects.filter(verb="manifest.deleted").exists()


def test_readers_read_but_do_not_create_and_outsiders_see_nothing(owner_api, reader_api, outsider_api, model_pkl, create_manifest):
    manifest = create_manifest(owner_api).json()
    assert reader_api.get("/api/v1/manifests/churnpred/").status_code == 200
    assert create_manifest(reader_api).status_code == 403
    assert reader_api.delete("/api/v1/manifests/churnpred/").status_code == 403
    for path in (f"/api/v1/manifests/{manifest['id']}/", f"/api/v1/manifests/{manifest['id']}/files/score.py"):
        assert outsider_api.get(path).status_code == 404
    assert outsider_api.delete(f"/api/v1/manifests/{manifest['id']}/").status_code == 404
    assert outsider_api.get("/api/v1/manifests/").json()["count"] == 0


def test_the_list_searches_filters_and_paginates(owner_api, model_pkl, create_manifest):
    create_manifest(owner_api)
    create_manifest(owner_api)
    create_manifest(owner_api, name="other")
    assert owner_api.get("/api/v1/manifests/?page_size=2").json()["count"] == 3
    assert [m["version"] for m in owner_api.get("/api/v1/manifests/?name=churnpred&ordering=-version").json()["results"]] == [2, 1]
    assert {m["name"] for m in owner_api.get("/api/v1/manifests/?search=oth").json()["results"]} == {"other"}


def test_requirements_given_as_a_list_refuse_a_value_with_a_newline():
    from registry.checks import requirements_from_list
    from core.errors import PortalError

    assert requirements_from_list(["pandas==2.2.3", "numpy"]) == b"pandas==2.2.3\nnumpy\n"
    with pytest.raises(PortalError, match="control characters"):
        requirements_from_list(["pandas\n--index-url http://x"])
