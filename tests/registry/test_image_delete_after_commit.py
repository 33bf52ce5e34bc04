"""Deleting an image never calls the Docker engine inside the request (issue 11): the row goes in
one short transaction and the engine's image is removed after the commit, by a task on the
maintenance queue. The engine here first accepts and never answers (the request does not notice),
then is the real one: the task removes the image, leaves a tag a newer build took, and an
unreachable engine is retried."""
from __future__ import annotations

import subprocess
import time

import pytest

from tests.helpers import wait_until
from tests.real_parts import missing_part


def _image(workspace, *, tag: str, engine_id: str, status: str = "succeeded"):
    from registry.models import Image, ImageLogChunk, Manifest

    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag=tag, status=status,
                                 image_id=engine_id)
    ImageLogChunk.objects.create(image=image, seq=0, text="built\n")
    return image


@pytest.mark.django_db
def test_the_delete_answers_at_once_while_the_engine_never_answers(owner, workspace, owner_api, settings, silent_engine,
                                                                   django_capture_on_commit_callbacks):
    from registry.models import Image, ImageLogChunk
    from workspaces.models import Activity

    settings.MLPORTAL_DOCKER_URL = silent_engine.url
    image = _image(workspace, tag="mlportal/team-m:1", engine_id="sha256:" + "2" * 64)
    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = owner_api.delete(f"/api/v1/images/{image.pk}/")
    assert response.status_code == 204, response.content
    assert time.monotonic() - started < 2 and silent_engine.accepted == 0  # the old delete waited on the engine here
    assert not Image.objects.filter(pk=image.pk).exists() and not ImageLogChunk.objects.exists()
    assert Activity.objects.filter(verb="image.deleted").exists()
    assert len(callbacks) == 1  # the engine's removal, sent once the row's delete commits


@pytest.mark.django_db
def test_a_refused_delete_changes_nothing_and_sends_no_task(owner, workspace, owner_api, reader_api,
                                                            django_capture_on_commit_callbacks):
    from registry.models import Image

    image = _image(workspace, tag="mlportal/team-m:1", engine_id="sha256:" + "2" * 64, status="building")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        building = owner_api.delete(f"/api/v1/images/{image.pk}/")
        Image.objects.filter(pk=image.pk).update(status="deleting")  # retention removes it meanwhile
        deleting = owner_api.delete(f"/api/v1/images/{image.pk}/")
        Image.objects.filter(pk=image.pk).update(status="succeeded")
        reader = reader_api.delete(f"/api/v1/images/{image.pk}/")
    assert building.status_code == 409 and "building" in building.json()["error"]["message"]
    assert deleting.status_code == 409 and "being removed already" in deleting.json()["error"]["message"]
    assert reader.status_code == 403
    assert Image.objects.filter(pk=image.pk).exists() and callbacks == []


def _engine_or_skip():
    from compute.engine import engine_status

    if not engine_status()["ok"]:
        missing_part("Docker engine", "the image removal task talks to the engine")


def _tag(source: str, tag: str) -> str:
    subprocess.run(["docker", "tag", source, tag], check=True, capture_output=True)
    return subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", tag], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.docker
@pytest.mark.integration
def test_the_task_removes_the_engine_image_once_the_row_is_gone(transactional_db, celery_worker, owner, workspace,
                                                                 owner_api, settings):
    from compute.images import image_exists

    _engine_or_skip()
    tag = f"mlportal/team-delete-test:{int(time.time())}"
    engine_id = _tag(settings.MLPORTAL_BASE_IMAGE, tag)
    image = _image(workspace, tag=tag, engine_id=engine_id)
    try:
        assert owner_api.delete(f"/api/v1/images/{image.pk}/").status_code == 204
        wait_until(lambda: not image_exists(tag), timeout=60, message="the worker to remove the deleted image's tag")
        assert image_exists(settings.MLPORTAL_BASE_IMAGE)  # bytes another tag holds stay
    finally:
        subprocess.run(["docker", "rmi", tag], capture_output=True)


@pytest.mark.docker
def test_a_tag_a_newer_build_took_is_left_and_an_unreachable_engine_is_retried(settings):
    from compute.engine import EngineUnreachable
    from compute.images import image_exists
    from registry.worker import engine_image_remove

    _engine_or_skip()
    tag = f"mlportal/team-delete-test:moved{int(time.time())}"
    _tag(settings.MLPORTAL_BASE_IMAGE, tag)
    try:
        # The deleted row's bytes were other ones (the engine has them no more): the tag stays.
        assert engine_image_remove(tag=tag, engine_id="sha256:" + "0" * 64) == "gone"
        assert image_exists(tag)
        settings.MLPORTAL_DOCKER_URL = "unix:///tmp/no-docker-engine-here.sock"
        with pytest.raises(EngineUnreachable):  # the task retries this one (with backoff)
            engine_image_remove(tag=tag, engine_id="sha256:" + "0" * 64)
    finally:
        subprocess.run(["docker", "rmi", tag], capture_output=True)


def test_the_removal_task_is_retried_only_for_an_unreachable_engine_on_the_maintenance_queue():
    from django.conf import settings

    from registry.tasks import remove_engine_image

    assert settings.CELERY_TASK_ROUTES[remove_engine_image.name] == {"queue": "celery"}
    assert remove_engine_image.acks_late and remove_engine_image.max_retries == 6


@pytest.mark.docker
@pytest.mark.django_db
def test_removing_an_image_whose_tag_another_build_took_removes_only_its_own_bytes(workspace):
    """Another portal on the same engine (or a rebuild) built the same tag since: removing our
    image (retention, a deleted service's images) takes our bytes by their id and leaves the tag,
    which names the other build. It used to remove the tag, and with it the other build."""
    from compute.engine import image_id
    from registry.worker import image_remove
    from tests.helpers import build_unique_image, engine_image_ids

    _engine_or_skip()
    tag = f"mlportal/team/shared-tag:{int(time.time())}"
    ours = build_unique_image(tag)
    theirs = build_unique_image(tag)  # the tag moves to the other build; ours stays, untagged
    try:
        assert ours != theirs and image_id(tag) == theirs
        image = _image(workspace, tag=tag, engine_id=ours)
        assert image_remove(image_id=image.pk) is not None
        assert image_id(tag) == theirs  # the other build keeps its tag and its bytes
        assert ours not in engine_image_ids()
    finally:
        subprocess.run(["docker", "rmi", "-f", tag, ours], capture_output=True)


@pytest.mark.django_db
def test_two_workspaces_never_share_an_image_tag(owner):
    """Workspace team-a's image churn and workspace team's image a-churn had one tag
    (mlportal/team-a-churn:1), so each build moved it from the other workspace's image."""
    from registry.services import image_repository
    from workspaces.services import workspace_create

    first = workspace_create(name="tagged-a", user=owner)
    second = workspace_create(name="tagged", user=owner)
    assert image_repository(first, "churn") != image_repository(second, "a-churn")
    assert image_repository(first, "churn") == "mlportal/tagged-a/churn"
