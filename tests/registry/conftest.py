"""Fixtures for the registry tests: the churn template's files (schema generated once per session)
and small helpers that register models and create manifests through the API."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest

from tests.runtime.conftest import TEMPLATE, runtime_env, trained_churn  # noqa: F401 (shared session fixture)

SCORE = (TEMPLATE / "score.py").read_bytes()
REQUIREMENTS = (TEMPLATE / "requirements.txt").read_bytes()
SAMPLE_REQUEST = json.loads((TEMPLATE / "sample_request.json").read_text())


@pytest.fixture(scope="session")
def churn_schema(tmp_path_factory) -> bytes:
    """service_schema.json of the churn template, written by its churn_schema_gen.py as in the lab."""
    app = tmp_path_factory.mktemp("churn-schema") / "app"
    shutil.copytree(TEMPLATE, app, ignore=shutil.ignore_patterns("data"))
    done = subprocess.run([sys.executable, "churn_schema_gen.py"], cwd=app, env=runtime_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return (app / "service_schema.json").read_bytes()


def upload(name: str, content: bytes) -> io.BytesIO:
    handle = io.BytesIO(content)
    handle.name = name
    return handle


@pytest.fixture
def register_model():
    """register_model(api, name="model.pkl", content=b"…", filename=None, **fields) -> response."""

    def register(api, name: str = "model.pkl", content: bytes = b"not really a pickle", filename: str | None = None, **fields):
        data = {"name": name, "file": upload(filename or name, content), **fields}
        return api.post("/api/v1/models/", data, format="multipart")

    return register


@pytest.fixture
def create_manifest(churn_schema):
    """create_manifest(api, models=["model.pkl:1"], name="churnpred", score=…, schema=…, requirements=…) -> response."""

    def create(api, models=("model.pkl:1",), name: str = "churnpred", score: bytes = SCORE, schema: bytes | None = None,
               requirements: bytes | None = REQUIREMENTS, **fields):
        data = {"name": name, "models": list(models), "score_file": upload("score.py", score),
                "schema_file": upload("service_schema.json", churn_schema if schema is None else schema), **fields}
        if requirements is not None:
            data["requirements_file"] = upload("requirements.txt", requirements)
        return api.post("/api/v1/manifests/", data, format="multipart")

    return create


def stored_files(root) -> list[str]:
    """Every file under the storage root (relative paths), to prove nothing was left behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def storage_root(request, tmp_path):
    """Each test stores files in its own folder, so a test can prove nothing was left behind. Tests
    with a worker process keep the shared data folder, which is what the worker reads."""
    if "celery_worker" in request.fixturenames or "live_server" in request.fixturenames:
        from django.conf import settings as django_settings

        yield django_settings.MEDIA_ROOT
        return
    settings = request.getfixturevalue("settings")
    root = tmp_path / "files"
    root.mkdir()
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": root}}}
    yield root
