"""Image builds beyond the happy path: a requirement pip cannot find, an unreachable engine, a build
over its time limit, a task delivered twice, a worker lost mid-build, deleting images, and a
pickle that would leave a marker if anything in the portal ever loaded it."""
from __future__ import annotations

import json
import os
import pickle

import pytest
from django.test import override_settings
from django.utils import timezone

from compute.containers import start_service_container, stop_container
from compute.engine import engine_status
from compute.images import image_exists
from registry import services, worker
from registry.models import Image, ImageLogChunk
from tests.helpers import wait_until
from tests.registry.conftest import upload
from tests.real_parts import missing_part
from workspaces.models import Activity

pytestmark = [pytest.mark.docker]

SMALL_SCORE = b"def init():\n    pass\n\n\ndef run(data):\n    return {'n': len(data.get('values', []))}\n"
SMALL_SCHEMA = json.dumps({"inputs": {"data": {"kind": "json", "type": "object", "example": {"values": [1, 2]}}}}).encode()


@pytest.fixture(autouse=True)
def docker_engine():
    status = engine_status()
    if not status["ok"]:
        missing_part("Docker engine", status["error"])


class WritesMarker:
    """Unpickling this calls open(path, "w"): the marker file appears if anyone loads the pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def small_manifest(api, *, requirements: bytes = b"six\n", model: bytes = b"tiny model", name: str = "small",
                   accept: bool = False):
    registered = api.post("/api/v1/models/", {"name": "model.bin", "file": upload("model.bin", model)}, format="multipart")
    assert registered.status_code == 201
    if accept:  # an owner vouches for a file the scan found dangerous, so a manifest may bundle it
        assert api.post(f"/api/v1/models/{registered.json()['id']}/accept/").status_code == 200
    response = api.post("/api/v1/manifests/", {
        "name": name, "models": ["model.bin"], "score_file": upload("score.py", SMALL_SCORE),
        "schema_file": upload("service_schema.json", SMALL_SCHEMA),
        "requirements_file": upload("requirements.txt", requirements)}, format="multipart")
    assert response.status_code == 201, response.json()
    return response.json()


def wait_finished(api, image_id: str, timeout: float = 600) -> dict:
    def finished():
        body = api.get(f"/api/v1/images/{image_id}/").json()
        return body if body["status"] in ("succeeded", "failed") else None

    return wait_until(finished, timeout=timeout, interval=0.5, message=f"image {image_id} to finish")


@pytest.mark.integration
def test_a_requirement_missing_from_pypi_fails_with_the_resolvers_message_on_top_of_the_page(
        celery_worker, owner_api, page_client, owner):
    small_manifest(owner_api, requirements=b"this-package-does-not-exist-mlp==1.0\n")
    image = owner_api.post("/api/v1/images/", {"manifest": "small"}, format="json").json()

    def first_text():
        log = owner_api.get(f"/api/v1/images/{image['id']}/log/?offset=0").json()
        return log if log["text"] else None

    # While pip looks for the package (seconds), the log endpoint already serves the build's lines.
    live = wait_until(first_text, timeout=120, interval=0.2, message="the first build log lines")
    assert live["status"] == "building" and not live["done"] and "building mlportal/team/small:1" in live["text"]
    final = wait_finished(owner_api, image["id"])
    assert final["status"] == "failed"
    assert "this-package-does-not-exist-mlp" in final["error"]
    assert "No matching distribution" in final["error"] or "Could not find a version" in final["error"]
    assert final["error_step"] == "download requirements" and final["error_log_tail"]
    html = page_client(owner).get(f"/images/{image['id']}/").content.decode()
    top = html.index('data-testid="build-error"')
    assert top < html.index('data-tab="overview"') and "download requirements" in html[top:]
    assert "No matching distribution" in html or "Could not find a version" in html
    log = owner_api.get(f"/api/v1/images/{image['id']}/log/?offset=0").json()
    assert log["done"] and log["status"] == "failed" and "build failed" in log["text"]


@pytest.mark.integration
def test_a_pickle_is_never_loaded_by_the_web_or_the_worker(celery_worker, owner_api, tmp_path):
    marker = tmp_path / "unpickled-marker"
    evil = pickle.dumps(WritesMarker(str(marker)))
    manifest = small_manifest(owner_api, model=evil, accept=True)
    image = owner_api.post("/api/v1/images/", {"manifest": manifest["id"]}, format="json").json()
    final = wait_finished(owner_api, image["id"])
    assert final["status"] == "succeeded", final["error"]
    download = owner_api.get("/api/v1/models/model.bin/download/")
    assert b"".join(download.streaming_content) == evil
    assert owner_api.get(f"/api/v1/images/{image['id']}/usage/").status_code == 200
    assert not marker.exists()
    services_delete = owner_api.delete(f"/api/v1/images/{image['id']}/")
    assert services_delete.status_code == 204
    wait_until(lambda: not image_exists(final["tag"]), timeout=60, message="the worker to remove the deleted image")
    assert not marker.exists()
    pickle.loads(evil)  # the marker works: loading the file would have left it
    assert marker.exists()


def _small_image(owner, workspace, **kwargs) -> Image:
    from tests.registry.conftest import upload as make_upload

    model = services.model_register_upload(workspace=workspace, name="model.bin", fileobj=make_upload("model.bin", kwargs.pop("model", b"m")),
                                           filename="model.bin", user=owner)
    manifest = services.manifest_create(workspace=workspace, name="small", models=[model], score=SMALL_SCORE, schema=SMALL_SCHEMA,
                                        requirements=b"six\n", user=owner)
    return services.image_create(manifest=manifest, user=owner)


def test_an_unreachable_engine_fails_the_build_with_the_reason(transactional_db, owner, workspace, settings):
    settings.MLPORTAL_DOCKER_URL = "unix:///tmp/no-docker-engine-here.sock"
    image = _small_image(owner, workspace)
    assert worker.image_build(image_id=str(image.pk)) == "failed"
    image.refresh_from_db()
    assert image.status == "failed" and "Docker engine unreachable" in image.error and image.finished_at


def test_a_build_over_its_time_limit_fails_with_the_reason(transactional_db, owner, workspace, settings):
    settings.MLPORTAL_BUILD_TIMEOUT = 1
    image = _small_image(owner, workspace, model=b"\x00" + os.urandom(48 * 1024 * 1024))  # no pickle opcode first
    assert worker.image_build(image_id=str(image.pk)) == "failed"
    image.refresh_from_db()
    assert "over its time limit of 1 s" in image.error and image.error_step
    assert not image_exists(image.tag)


def test_a_second_delivery_builds_nothing_and_a_stale_build_is_taken_over(transactional_db, owner, owner_api, workspace):
    image = _small_image(owner, workspace)
    assert worker.image_build(image_id=str(image.pk)) == "succeeded"
    chunks = ImageLogChunk.objects.filter(image=image).count()
    assert worker.image_build(image_id=str(image.pk)) is None
    assert ImageLogChunk.objects.filter(image=image).count() == chunks

    # A worker died mid-build: the image says building but its heartbeat is old.
    stale = timezone.now() - timezone.timedelta(seconds=worker.STALE_BUILD_SECONDS + 5)
    Image.objects.filter(pk=image.pk).update(status="building", heartbeat_at=stale)
    assert worker.image_build(image_id=str(image.pk)) == "succeeded"
    # A live one is left alone.
    Image.objects.filter(pk=image.pk).update(status="building", heartbeat_at=timezone.now())
    assert worker.image_build(image_id=str(image.pk)) is None

    Image.objects.filter(pk=image.pk).update(status="building")
    refused = owner_api.delete(f"/api/v1/images/{image.pk}/")
    assert refused.status_code == 409 and "building" in refused.json()["error"]["message"]
    Image.objects.filter(pk=image.pk).update(status="succeeded")
    image.refresh_from_db()
    # The row goes at once (the engine is not asked in the request); the engine's image after the
    # commit, by registry.worker.engine_image_remove (the task). A container the portal does not
    # manage still runs it: the engine refuses, which is logged, and a later removal takes it.
    started = start_service_container(image=image.tag, service_id="foreign", replica=0, name=f"mlportal-foreign-{os.getpid()}", env={})
    try:
        with override_settings(MLPORTAL_DOCKER_URL="unix:///tmp/no-docker-engine-here.sock"):
            assert owner_api.delete(f"/api/v1/images/{image.tag}/").status_code == 204
        assert not Image.objects.exists() and Activity.objects.filter(verb="image.deleted").exists()
        assert worker.engine_image_remove(tag=image.tag, engine_id=image.image_id) == "refused"
        assert image_exists(image.tag)
    finally:
        stop_container(started["id"])
    assert worker.engine_image_remove(tag=image.tag, engine_id=image.image_id) == "removed"
    assert not image_exists(image.tag)
    assert worker.engine_image_remove(tag=image.tag, engine_id=image.image_id) == "gone"  # a second delivery
