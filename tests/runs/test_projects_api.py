"""The projects API: create (blank and from a template), look up by id or name, settings, files,
uploads and downloads, with outsiders answered 404 and readers 403 on every write."""
from __future__ import annotations

import io
import tarfile
import zipfile

import pytest
from django.test import override_settings

from runs.models import Project, ProjectFile
from workspaces.models import Activity

pytestmark = pytest.mark.django_db


def test_creating_a_project_from_the_churn_template_copies_its_files(owner_api):
    res = owner_api.post("/api/v1/projects/", {"name": "churn_prediction", "template": "churn"}, format="json")
    assert res.status_code == 201, res.json()
    body = res.json()
    assert body["template"] == "churn" and body["workspace"] == "team"
    assert "scikit-learn" in body["requirements"]
    files = owner_api.get("/api/v1/projects/churn_prediction/files/?page_size=100").json()["results"]
    paths = {f["path"] for f in files}
    assert {"CATelcoCustomerChurnModelingWithoutDprep.py", "score.py", "requirements.txt",
            "data/CATelcoCustomerChurnTrainingSample.csv", "sample_request.json"} <= paths
    assert Activity.objects.filter(verb="project.created", target_name="churn_prediction").exists()


def test_an_unknown_template_is_a_400_naming_it(owner_api):
    res = owner_api.post("/api/v1/projects/", {"name": "p1", "template": "nope"}, format="json")
    assert res.status_code == 400
    assert "nope" in res.json()["error"]["message"] and "churn" in res.json()["error"]["message"]
    assert not Project.objects.exists()


def test_a_duplicate_name_is_a_409_and_a_bad_name_a_400(owner_api, blank):
    assert owner_api.post("/api/v1/projects/", {"name": "scratch"}, format="json").status_code == 409
    res = owner_api.post("/api/v1/projects/", {"name": "Bad Name!"}, format="json")
    assert res.status_code == 400 and res.json()["error"]["fields"]["name"]


def test_a_project_is_found_by_id_or_name(owner_api, blank):
    assert owner_api.get(f"/api/v1/projects/{blank.id}/").json()["name"] == "scratch"
    assert owner_api.get("/api/v1/projects/scratch/").json()["id"] == str(blank.id)


def test_the_list_searches_orders_and_paginates(owner_api, owner, workspace):
    from runs import services

    for name in ("alpha", "beta", "gamma"):
        services.project_create(workspace=workspace, name=name, user=owner, description=f"about {name}")
    body = owner_api.get("/api/v1/projects/?search=amm").json()
    assert [p["name"] for p in body["results"]] == ["gamma"]
    body = owner_api.get("/api/v1/projects/?ordering=-name&page_size=2").json()
    assert [p["name"] for p in body["results"]] == ["gamma", "beta"] and body["count"] == 3 and body["next"]


def test_settings_change_and_bad_settings_name_the_field(owner_api, blank):
    res = owner_api.patch(f"/api/v1/projects/{blank.id}/", {"time_limit_s": 30, "memory_mb": 512, "default_target": "local",
                                                           "requirements": "numpy\n"}, format="json")
    assert res.status_code == 200, res.json()
    assert res.json()["time_limit_s"] == 30 and res.json()["default_target"] == "local"
    assert res.json()["requirements"] == "numpy\n"
    assert ProjectFile.objects.filter(project=blank, path="requirements.txt").exists()
    res = owner_api.patch(f"/api/v1/projects/{blank.id}/", {"memory_mb": 1}, format="json")
    assert res.status_code == 400 and "memory_mb" in res.json()["error"]["fields"]
    res = owner_api.patch(f"/api/v1/projects/{blank.id}/", {"default_target": "cluster"}, format="json")
    assert res.status_code == 400 and "cluster" in res.json()["error"]["message"]


def test_a_file_is_written_read_and_deleted_through_its_path(owner_api, blank):
    url = f"/api/v1/projects/{blank.id}/files/src/util.py"
    res = owner_api.put(url, b"X = 1\n", content_type="application/octet-stream")
    assert res.status_code == 201, res.content
    res = owner_api.get(url)
    assert res.status_code == 200 and b"".join(res.streaming_content) == b"X = 1\n"
    assert res["Content-Disposition"].startswith("attachment") and res["X-Content-Type-Options"] == "nosniff"
    assert owner_api.put(url, b"X = 2\n", content_type="application/octet-stream").status_code == 200
    assert b"".join(owner_api.get(url).streaming_content) == b"X = 2\n"
    assert owner_api.delete(url).status_code == 204
    assert owner_api.get(url).status_code == 404


def test_requirements_follow_the_requirements_file(owner_api, blank):
    owner_api.put(f"/api/v1/projects/{blank.id}/files/requirements.txt", b"pandas>=2\n", content_type="application/octet-stream")
    assert owner_api.get(f"/api/v1/projects/{blank.id}/").json()["requirements"] == "pandas>=2\n"
    owner_api.delete(f"/api/v1/projects/{blank.id}/files/requirements.txt")
    assert owner_api.get(f"/api/v1/projects/{blank.id}/").json()["requirements"] == ""


@pytest.mark.parametrize("path", ["../evil.py", "/etc/passwd", "a/../../b", "bad\x01name.py"])
def test_a_file_path_that_leaves_the_project_is_a_400(owner_api, blank, path):
    from runs import services
    from core.errors import PortalError

    with pytest.raises(PortalError):
        services.project_file_put(project=blank, path=path, content=b"x", user=blank.created_by)
    assert not ProjectFile.objects.filter(project=blank).exclude(path="train.py").exists()


def test_a_single_file_upload_lands_at_its_path(owner_api, blank):
    upload = io.BytesIO(b"a,b\n1,2\n")
    upload.name = "table.csv"
    res = owner_api.post(f"/api/v1/projects/{blank.id}/upload/", {"file": upload, "path": "data/t.csv"}, format="multipart")
    assert res.status_code == 201, res.json()
    assert ProjectFile.objects.filter(project=blank, path="data/t.csv", size=8).exists()


def _zip(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    buf.seek(0)
    buf.name = "folder.zip"
    return buf


def test_an_archive_is_extracted_and_replace_makes_it_the_only_files(owner_api, blank):
    res = owner_api.post(f"/api/v1/projects/{blank.id}/upload/",
                         {"file": _zip({"main.py": b"print(1)\n", "data/x.txt": b"x"}), "extract": "true", "replace": "true"},
                         format="multipart")
    assert res.status_code == 201, res.json()
    assert res.json()["count"] == 2
    assert sorted(ProjectFile.objects.filter(project=blank).values_list("path", flat=True)) == ["data/x.txt", "main.py"]


def test_the_archive_download_holds_every_file(owner_api, blank):
    res = owner_api.get(f"/api/v1/projects/{blank.id}/archive/")
    assert res.status_code == 200 and res["Content-Disposition"].startswith("attachment")
    with tarfile.open(fileobj=io.BytesIO(b"".join(res.streaming_content)), mode="r:gz") as tar:
        assert tar.getnames() == ["train.py"]
        assert tar.extractfile("train.py").read() == b"print('hello')\n"


@override_settings(MLPORTAL_MAX_UPLOAD_BYTES=2048)
def test_a_file_over_the_upload_cap_is_a_413_and_nothing_is_stored(owner_api, blank):
    url = f"/api/v1/projects/{blank.id}/files/big.bin"
    res = owner_api.put(url, b"x" * 5000, content_type="application/octet-stream")
    assert res.status_code == 413
    assert not ProjectFile.objects.filter(path="big.bin").exists()


def test_the_templates_list_is_searchable(owner_api):
    body = owner_api.get("/api/v1/templates/?search=churn").json()
    assert [t["name"] for t in body["results"]] == ["Customer Churn Prediction"]
    assert owner_api.get("/api/v1/templates/?search=zzz").json()["results"] == []


def test_deleting_a_project_needs_the_owner(owner_api, contributor_api, blank):
    assert contributor_api.delete(f"/api/v1/projects/{blank.id}/").status_code == 403
    assert owner_api.delete(f"/api/v1/projects/{blank.id}/").status_code == 204
    assert not Project.objects.filter(id=blank.id).exists()


PROJECT_ENDPOINTS = [
    ("get", "/api/v1/projects/{id}/"),
    ("patch", "/api/v1/projects/{id}/"),
    ("delete", "/api/v1/projects/{id}/"),
    ("get", "/api/v1/projects/{id}/files/"),
    ("get", "/api/v1/projects/{id}/files/train.py"),
    ("put", "/api/v1/projects/{id}/files/train.py"),
    ("delete", "/api/v1/projects/{id}/files/train.py"),
    ("post", "/api/v1/projects/{id}/upload/"),
    ("get", "/api/v1/projects/{id}/archive/"),
    ("post", "/api/v1/projects/{id}/prepare/"),
]


@pytest.mark.parametrize("method,url", PROJECT_ENDPOINTS)
def test_outsider_gets_404_on_every_project_endpoint(outsider_api, blank, method, url):
    res = getattr(outsider_api, method)(url.format(id=blank.id), {}, format="json")
    assert res.status_code == 404
    assert outsider_api.get("/api/v1/projects/").json()["count"] == 0


@pytest.mark.parametrize("method,url", [e for e in PROJECT_ENDPOINTS if e[0] != "get"])
def test_reader_gets_403_on_every_project_write(reader_api, blank, method, url):
    res = getattr(reader_api, method)(url.format(id=blank.id), {}, format="json")
    assert res.status_code == 403, (url, res.content)
    assert "contributor" in res.json()["error"]["message"] or "owner" in res.json()["error"]["message"]


def test_reader_cannot_create_a_project_and_outsider_cannot_create_one_in_the_team(reader_api, outsider_api, workspace):
    assert reader_api.post("/api/v1/projects/", {"name": "x"}, format="json").status_code == 403
    assert outsider_api.post("/api/v1/projects/", {"name": "x", "workspace": "team"}, format="json").status_code == 404
