"""Fixtures for the deployments tests: the lab's churn files (model trained once per session),
helpers that create services through the API, score through the portal and talk to containers.

Docker work is shared: the scikit-learn environment image is built once (content-hashed, kept
in the engine), so each service image a test builds from it is a cached one-second layer build.
"""
from __future__ import annotations

import http.client
import io
import json

import pytest

from tests.helpers import wait_until
from tests.runtime.conftest import TEMPLATE, trained_churn  # noqa: F401 (shared session fixture)
from tests.real_parts import missing_part

SCORE = (TEMPLATE / "score.py").read_bytes()
REQUIREMENTS = (TEMPLATE / "requirements.txt").read_bytes()
SAMPLE_REQUEST = json.loads((TEMPLATE / "sample_request.json").read_text())
BROKEN_SCORE = b'''def init():
    raise RuntimeError("cannot load the model: the model store is unreachable")


def run(input_df):
    return "never"
'''
BUILD_TIMEOUT = 900  # a first build of the scikit-learn environment fills the wheel cache
DEPLOY_TIMEOUT = 180


@pytest.fixture(scope="session")
def churn(trained_churn):  # noqa: F811
    """The lab's files: model.pkl (trained by the template's script), score.py, service_schema.json
    (from churn_schema_gen.py), requirements.txt."""
    app = trained_churn["app"]
    return {"model": (app / "model.pkl").read_bytes(), "score": SCORE,
            "schema": (app / "service_schema.json").read_bytes(), "requirements": REQUIREMENTS}


def upload(name: str, content: bytes) -> io.BytesIO:
    handle = io.BytesIO(content)
    handle.name = name
    return handle


@pytest.fixture
def create_realtime(churn):
    """create_realtime(api, name="churnpred", score=…, schema=…, **fields) -> response of the one-shot create."""

    def create(api, name: str = "churnpred", *, score: bytes | None = None, schema: bytes | None = None,
               model: bytes | None = None, model_filename: str = "model.pkl", requirements: bytes | None = REQUIREMENTS,
               **fields):
        data = {"name": name, "model_file": upload(model_filename, churn["model"] if model is None else model),
                "score_file": upload("score.py", churn["score"] if score is None else score),
                "schema_file": upload("service_schema.json", churn["schema"] if schema is None else schema),
                "runtime": "python", **fields}
        if requirements is not None:
            data["requirements_file"] = upload("requirements.txt", requirements)
        return api.post("/api/v1/services/create-realtime/", data, format="multipart")

    return create


def wait_for(api, ref: str, statuses: tuple[str, ...], *, timeout: float = BUILD_TIMEOUT + DEPLOY_TIMEOUT) -> dict:
    """Polls the service until its status is one of ``statuses``; returns its JSON."""

    def reached():
        response = api.get(f"/api/v1/services/{ref}/")
        assert response.status_code == 200, response.content
        body = response.json()
        return body if body["status"] in statuses else None

    return wait_until(reached, timeout=timeout, interval=0.3, message=f"service {ref} to be {'/'.join(statuses)}")


def wait_settled(api, ref: str, *, timeout: float = DEPLOY_TIMEOUT) -> dict:
    """Waits until a change (update, rollback, scale, new key) is over."""
    return wait_for(api, ref, ("healthy", "unhealthy", "failed"), timeout=timeout)


@pytest.fixture
def built_image(churn):
    """built_image(api, name, score=SCORE) -> JSON of a succeeded image of the churn model with
    ``score`` (a new model version, manifest and image, built by the worker)."""

    def build(api, name: str, *, score: bytes = SCORE) -> dict:
        model = api.post("/api/v1/models/", {"name": "model.pkl", "file": upload("model.pkl", churn["model"])},
                         format="multipart")
        assert model.status_code == 201, model.json()
        manifest = api.post("/api/v1/manifests/", {
            "name": name, "models": [model.json()["ref"]], "score_file": upload("score.py", score),
            "schema_file": upload("service_schema.json", churn["schema"]),
            "requirements_file": upload("requirements.txt", REQUIREMENTS)}, format="multipart")
        assert manifest.status_code == 201, manifest.json()
        created = api.post("/api/v1/images/", {"manifest": manifest.json()["id"]}, format="json")
        assert created.status_code == 201, created.json()

        def finished():
            body = api.get(f"/api/v1/images/{created.json()['id']}/").json()
            return body if body["status"] in ("succeeded", "failed") else None

        image = wait_until(finished, timeout=BUILD_TIMEOUT, interval=0.3, message=f"image {name} to build")
        assert image["status"] == "succeeded", image["error"] + "\n" + image["error_log_tail"]
        return image

    return build


def score(client, ref: str, body, *, key: str | None = None, headers: dict | None = None):
    """POSTs ``body`` to the portal's scoring proxy with ``key``; returns the response."""
    extra = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key is not None else {}
    extra.update(headers or {})
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.generic("POST", f"/api/v1/services/{ref}/score", data, content_type="application/json", **extra)


def call_container(host: str, port: int, path: str, body=None, *, key: str | None = None, method: str = "POST"):
    """(status, parsed body) of a request straight to a container's published port."""
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data.decode("utf-8", "replace")
    finally:
        connection.close()


def service_containers(service_id: str) -> list[dict]:
    """The engine's containers labelled with this service's id (running or not)."""
    from compute.engine import LABEL_ID
    from compute.runner import list_containers

    return [c for c in list_containers("service") if c["labels"].get(LABEL_ID) == str(service_id)]


@pytest.fixture(autouse=True)
def storage_root(request, tmp_path):
    """Tests without a worker store files in their own folder, so a test can prove nothing was left
    behind; tests with a worker keep the data folder, which is what the worker reads."""
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


@pytest.fixture
def deploy_worker(celery_worker, remove_our_containers):
    """The real worker, and a clean engine afterwards."""
    from compute.engine import engine_status

    status = engine_status()
    if not status["ok"]:
        missing_part("Docker engine", status["error"])
    return celery_worker


def stored_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
