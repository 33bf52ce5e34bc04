"""Checks at the door: a project's requirements are refused at upload and PATCH with the manifests'
rules, and run limits are bounded by the portal's maxima with a message naming the maximum."""
import io
import tarfile

import pytest

from runs import services
from runs.models import Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(owner, workspace):
    return services.project_create(workspace=workspace, name="scratch", user=owner)


@pytest.mark.parametrize("line", ["--index-url https://evil.example/simple", "-r /etc/passwd", "-e .",
                                  "pkg @ https://evil.example/pkg.tar.gz", "--extra-index-url=http://x"])
def test_a_patch_with_pip_options_or_urls_is_refused(owner_api, project, line):
    response = owner_api.patch("/api/v1/projects/scratch/", {"requirements": f"pandas==2.2.3\n{line}\n"}, format="json")
    assert response.status_code == 400, response.content
    assert "requirements" in response.json()["error"]["fields"]
    project.refresh_from_db()
    assert project.requirements == "" and not project.files.filter(path="requirements.txt").exists()


def test_an_uploaded_requirements_file_is_refused_too(owner_api, project):
    response = owner_api.put("/api/v1/projects/scratch/files/requirements.txt",
                             data=b"--index-url https://evil.example/simple\nsix\n", content_type="application/octet-stream")
    assert response.status_code == 400, response.content
    assert "pip option" in response.json()["error"]["message"]
    assert not project.files.filter(path="requirements.txt").exists()


def test_an_archive_upload_with_a_bad_requirements_file_leaves_nothing(owner_api, project):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in (("train.py", b"print(1)\n"), ("requirements.txt", b"six\n--trusted-host evil\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw.seek(0)
    raw.name = "project.tar.gz"
    response = owner_api.post("/api/v1/projects/scratch/upload/", {"file": raw, "extract": "true"}, format="multipart")
    assert response.status_code == 400, response.content
    assert not project.files.exists()


def test_good_requirements_are_kept(owner_api, project):
    response = owner_api.patch("/api/v1/projects/scratch/", {"requirements": "pandas==2.2.3\nscikit-learn>=1.5 # ok\n"},
                               format="json")
    assert response.status_code == 200
    assert Project.objects.get(pk=project.pk).requirements.startswith("pandas==2.2.3")


@pytest.mark.parametrize("field,value,maximum", [("memory_mb", 1024 * 1024, "16384 MiB (the portal's maximum"),
                                                 ("cpus", 256, "8.0 CPUs (the portal's maximum")])
def test_run_limits_over_the_portals_maximum_are_refused_naming_it(owner_api, project, field, value, maximum):
    response = owner_api.patch("/api/v1/projects/scratch/", {field: value}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert f"and {maximum}" in error["message"] and field in error["fields"], error


def test_the_maximum_is_a_setting(owner_api, project, settings):
    settings.MLPORTAL_RUN_MAX_MEMORY_MB = 1024
    assert owner_api.patch("/api/v1/projects/scratch/", {"memory_mb": 1024}, format="json").status_code == 200
    response = owner_api.patch("/api/v1/projects/scratch/", {"memory_mb": 1025}, format="json")
    assert response.status_code == 400 and "and 1024 MiB (the portal's maximum" in response.json()["error"]["message"]


def test_nan_cpus_are_refused(owner_api, project):
    response = owner_api.patch("/api/v1/projects/scratch/", data='{"cpus": NaN}', content_type="application/json")
    assert response.status_code == 400
