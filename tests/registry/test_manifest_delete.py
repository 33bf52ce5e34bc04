"""Deleting a manifest takes the images built from it (issue 14): their rows go with it and their
Docker images leave the engine after the commit; while a service runs one of them it is refused
with a 409 naming the service and saying what to do. The API, the page and `mlportal manifest
delete` / `mlportal image delete` do it; with the real engine its image list shrinks. (Before,
a manifest with images answered 409 "delete the image first", one image at a time, and the CLI
had no delete verb for either.)"""
from __future__ import annotations

import uuid

import pytest

from registry.models import Image, ImageLogChunk, Manifest
from tests.cli.conftest import cli, login, portal  # noqa: F401
from tests.helpers import build_unique_image, engine_image_ids, wait_until
from workspaces.models import Activity


def _manifest(workspace, owner, name: str = "churnpred") -> Manifest:
    return Manifest.objects.create(workspace=workspace, name=name, version=1, content_hash="0" * 64, created_by=owner)


def _image(manifest, *, version: int = 1, tag: str = "", engine_id: str = "", status: str = "succeeded") -> Image:
    image = Image.objects.create(workspace=manifest.workspace, manifest=manifest, name=manifest.name, version=version,
                                 tag=tag or f"mlportal/team-{manifest.name}:{version}", status=status,
                                 image_id=engine_id or "sha256:" + f"{version}" * 64)
    ImageLogChunk.objects.create(image=image, seq=0, text="built\n")
    return image


def _service(workspace, image, name: str = "churnsvc", status: str = "healthy"):
    from deployments.models import Environment, Service

    environment = Environment.objects.get_or_create(workspace=workspace, name="local")[0]
    return Service.objects.create(workspace=workspace, name=name, environment=environment, image=image, status=status)


@pytest.mark.django_db
def test_its_images_go_with_it_and_their_engine_removal_is_sent_after_commit(
        owner, workspace, owner_api, django_capture_on_commit_callbacks, monkeypatch):
    from registry import tasks

    manifest = _manifest(workspace, owner)
    images = [_image(manifest, version=v) for v in (1, 2)]
    queued = _image(manifest, version=3, status="queued", engine_id="-")
    Image.objects.filter(pk=queued.pk).update(image_id="")  # never built: nothing to remove from the engine
    sent = []
    monkeypatch.setattr(tasks.remove_engine_image, "delay", lambda tag, engine_id: sent.append((tag, engine_id)))
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_api.delete("/api/v1/manifests/churnpred:1/")
    assert response.status_code == 204, response.content
    assert not Manifest.objects.exists() and not Image.objects.exists() and not ImageLogChunk.objects.exists()
    assert sorted(sent) == sorted((i.tag, i.image_id) for i in images)
    assert Activity.objects.filter(verb="image.deleted").count() == 3
    assert Activity.objects.get(verb="manifest.deleted").detail["images"] == ["churnpred:1", "churnpred:2", "churnpred:3"]


@pytest.mark.django_db
def test_a_service_running_one_of_its_images_is_named_in_a_409_and_nothing_goes(
        owner, workspace, owner_api, page_client, django_capture_on_commit_callbacks):
    manifest = _manifest(workspace, owner)
    _image(manifest, version=1)
    _service(workspace, _image(manifest, version=2))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = owner_api.delete("/api/v1/manifests/churnpred:1/")
        page = page_client(owner).post(f"/manifests/{manifest.pk}/delete/")
    assert response.status_code == 409, response.content
    message = response.json()["error"]["message"]
    assert "service churnsvc" in message and "delete the service, or update it" in message
    from django.contrib.messages import get_messages

    assert page.status_code == 302 and page["Location"].endswith(f"/manifests/{manifest.pk}/")
    assert any("service churnsvc" in str(m) for m in get_messages(page.wsgi_request))
    assert Image.objects.count() == 2 and Manifest.objects.exists() and callbacks == []


@pytest.mark.django_db
def test_a_building_image_or_a_service_being_removed_holds_it_back(owner, workspace, owner_api, reader_api):
    manifest = _manifest(workspace, owner)
    image = _image(manifest, status="building")
    building = owner_api.delete("/api/v1/manifests/churnpred:1/")
    assert building.status_code == 409 and "is building" in building.json()["error"]["message"]
    Image.objects.filter(pk=image.pk).update(status="succeeded")
    _service(workspace, image, status="deleted")  # its row lingers until its containers are gone
    lingering = owner_api.delete("/api/v1/manifests/churnpred:1/")
    assert lingering.status_code == 409 and "being removed" in lingering.json()["error"]["message"]
    assert reader_api.delete("/api/v1/manifests/churnpred:1/?workspace=team").status_code == 403
    assert Image.objects.filter(pk=image.pk).exists()


@pytest.mark.docker
@pytest.mark.integration
def test_the_cli_deletes_a_manifest_and_an_image_and_the_engine_list_shrinks(
        cli, login, owner, workspace, celery_worker):  # noqa: F811
    from compute.engine import connect, engine_status
    from tests.real_parts import missing_part

    if not engine_status()["ok"]:
        missing_part("Docker engine", "the images' removal talks to the engine")
    suffix = uuid.uuid4().hex[:8]
    tags = [f"mlportal/team-deltest{suffix}:{v}" for v in (1, 2)]
    lone_tag = f"mlportal/team-deltest{suffix}-lone:1"
    try:
        ids = [build_unique_image(t) for t in (*tags, lone_tag)]
        manifest = _manifest(workspace, owner, name=f"deltest{suffix}")
        for version, (tag, engine_id) in enumerate(zip(tags, ids), start=1):
            _image(manifest, version=version, tag=tag, engine_id=engine_id)
        other = _manifest(workspace, owner, name=f"deltest{suffix}-lone")
        _image(other, tag=lone_tag, engine_id=ids[2])
        assert set(ids) <= engine_image_ids()
        login(owner)

        deleted = cli("manifest", "delete", f"deltest{suffix}:1")
        assert deleted.code == 0, deleted.err
        assert f"Deleted manifest deltest{suffix}:1 and its image(s) deltest{suffix}:1, deltest{suffix}:2" in deleted.err
        wait_until(lambda: not set(ids[:2]) & engine_image_ids(), timeout=60, message="the worker to remove both images")
        assert ids[2] in engine_image_ids()  # another manifest's image stays

        gone = cli("image", "delete", f"deltest{suffix}-lone:1")
        assert gone.code == 0, gone.err
        wait_until(lambda: ids[2] not in engine_image_ids(), timeout=60, message="the worker to remove the image")
        assert not Image.objects.exists()
        missing = cli("image", "delete", f"deltest{suffix}-lone:1")
        assert missing.code != 0 and "deltest" in missing.err
    finally:
        with connect() as client:
            for tag in (*tags, lone_tag):
                try:
                    client.images.remove(tag, force=True)
                except Exception:  # noqa: BLE001 - already removed by the test
                    pass
