"""Environment images (`mlportal-env:<hash>`) no longer pile up (issue 14: nothing pruned them):
runs and image builds record each use, and the daily retention removes from the engine those
nothing used for MLPORTAL_ENV_IMAGE_KEEP_DAYS, except the MLPORTAL_ENV_IMAGE_KEEP_LAST used last
and any a service image was built from or an unfinished run runs in. The Storage API shows them
and what goes next."""
from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from compute.engine import connect
from registry.models import Image, Manifest
from retention.models import EnvironmentImage
from runs import services as runs
from runs.models import Run
from tests.helpers import build_unique_image, engine_image_ids

pytestmark = pytest.mark.docker


def _tracked(tag: str, *, days_ago: float, engine_id: str = "", size: int | None = None) -> EnvironmentImage:
    return EnvironmentImage.objects.create(tag=tag, engine_id=engine_id, size=size,
                                           last_used_at=timezone.now() - timedelta(days=days_ago))


def _remove_images(*tags: str) -> None:
    """Removes the test's tags from the engine, those the test removed already included."""
    with connect() as client:
        for tag in tags:
            try:
                client.images.remove(tag)
            except Exception:  # noqa: BLE001 - removed by the test already
                pass


@pytest.mark.django_db
def test_the_daily_retention_removes_only_the_environment_images_nothing_uses(settings, owner, workspace, owner_api,
                                                                            page_client):
    from retention.worker import retention_apply

    settings.MLPORTAL_ENV_IMAGE_KEEP_DAYS, settings.MLPORTAL_ENV_IMAGE_KEEP_LAST = 14, 2
    suffix = uuid.uuid4().hex[:10]
    stale_tag, served_tag = f"mlportal-env:stale{suffix}", f"mlportal-env:served{suffix}"
    try:
        stale_id, served_id = build_unique_image(stale_tag), build_unique_image(served_tag)
        _tracked(f"mlportal-env:recent{suffix}", days_ago=0)  # used today
        _tracked(f"mlportal-env:lastkept{suffix}", days_ago=16)  # the second used last: KEEP_LAST keeps it
        _tracked(served_tag, days_ago=18, engine_id=served_id, size=100)
        _tracked(stale_tag, days_ago=20, engine_id=stale_id, size=5000)
        running_tag = f"mlportal-env:running{suffix}"
        _tracked(running_tag, days_ago=22)
        manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
        Image.objects.create(workspace=workspace, manifest=manifest, name="m", version=1, tag="mlportal/team-m:1",
                             status="succeeded", env_image=served_tag)  # a service image built FROM it
        project = runs.project_create(workspace=workspace, name="envs", user=owner)
        runs.project_file_put(project=project, path="train.py", content=b"print(1)\n", user=owner)
        run = runs.run_submit(project=project, script="train.py", target="docker", user=owner)
        Run.objects.filter(id=run.id).update(status=Run.Status.RUNNING, image=running_tag)

        body = owner_api.get("/api/v1/storage/").json()
        assert [e["tag"] for e in body["next"]["environment_images"]] == [stale_tag]
        assert body["next"]["environment_image_count"] == 1 and body["next"]["bytes"] >= 5000
        in_use = {e["tag"]: e["in_use"] for e in body["environment_images"]}
        assert in_use[served_tag] and in_use[running_tag] and not in_use[stale_tag]
        page = page_client(owner).get("/storage/").content.decode()
        assert f"environment image <code>{stale_tag}</code>" in page and re.search(r"1 environment\s+image:", page)
        assert {stale_id, served_id} <= engine_image_ids()

        summary = retention_apply()
        assert summary["environment_images"] == 1 and summary["environment_image_bytes"] == 5000, summary
        ids = engine_image_ids()
        assert stale_id not in ids  # the engine's image list shrank
        assert served_id in ids  # a service image was built from it: kept
        assert not EnvironmentImage.objects.filter(tag=stale_tag).exists()
        assert EnvironmentImage.objects.count() == 4
    finally:
        _remove_images(stale_tag, served_tag)


@pytest.mark.django_db
def test_an_environment_image_a_container_still_runs_is_left_and_named(settings):
    from retention.envimages import environment_images_remove

    settings.MLPORTAL_ENV_IMAGE_KEEP_DAYS, settings.MLPORTAL_ENV_IMAGE_KEEP_LAST = 1, 0
    tag = f"mlportal-env:held{uuid.uuid4().hex[:10]}"
    image_id = build_unique_image(tag)
    with connect() as client:
        container = client.containers.create(tag, command=["true"])
    try:
        _tracked(tag, days_ago=3, engine_id=image_id)
        summary = environment_images_remove()
        assert summary["images"] == 0 and tag in summary["errors"][0]
        assert image_id in engine_image_ids() and EnvironmentImage.objects.filter(tag=tag, engine_id=image_id).exists()
    finally:
        with connect() as client:
            container.remove(force=True)
            client.images.remove(tag)


@pytest.mark.django_db
def test_an_environment_image_another_portal_built_is_left_to_it(settings, owner_api):
    """Environment images are tagged by content, so two portals on one engine share them; the
    daily retention of one removed the image the other had built and still used (its next run had
    to build it again). Now each portal removes only the ones it built, by their mlportal.portal label."""
    from compute.engine import LABEL_PORTAL
    from retention.envimages import environment_image_used, environment_images_remove
    from workspaces.instance import portal_instance

    settings.MLPORTAL_ENV_IMAGE_KEEP_DAYS, settings.MLPORTAL_ENV_IMAGE_KEEP_LAST = 1, 0
    suffix = uuid.uuid4().hex[:10]
    theirs_tag, ours_tag = f"mlportal-env:theirs{suffix}", f"mlportal-env:ours{suffix}"
    try:
        theirs = build_unique_image(theirs_tag, labels={LABEL_PORTAL: "another-portal"})
        ours = build_unique_image(ours_tag, labels={LABEL_PORTAL: portal_instance()})
        for tag in (theirs_tag, ours_tag):  # a run of this portal used each: the use records the builder
            environment_image_used(tag=tag)
        assert dict(EnvironmentImage.objects.filter(tag__in=[theirs_tag, ours_tag]).values_list("tag", "built_by")) == {
            theirs_tag: "another-portal", ours_tag: portal_instance()}
        EnvironmentImage.objects.filter(tag__in=[theirs_tag, ours_tag]).update(last_used_at=timezone.now() - timedelta(days=3))
        EnvironmentImage.objects.filter(tag=theirs_tag).update(size=10)
        EnvironmentImage.objects.filter(tag=ours_tag).update(size=20)
        # The Storage page's "what it frees next" frees nothing for theirs, and says so.
        planned = {e["tag"]: e for e in owner_api.get("/api/v1/storage/").json()["next"]["environment_images"]}
        assert (planned[theirs_tag]["ours"], planned[theirs_tag]["bytes"]) == (False, 0)
        assert (planned[ours_tag]["ours"], planned[ours_tag]["bytes"]) == (True, 20)

        summary = environment_images_remove()

        assert (summary["images"], summary["bytes"], summary["others"], summary["errors"]) == (1, 20, [theirs_tag], [])
        ids = engine_image_ids()
        assert theirs in ids and ours not in ids
        assert not EnvironmentImage.objects.filter(tag__in=[theirs_tag, ours_tag]).exists()  # this portal's use is over
    finally:
        _remove_images(theirs_tag, ours_tag)


@pytest.mark.django_db(transaction=True)
def test_runs_and_image_builds_record_the_environment_image_they_use(owner, workspace, owner_api):
    from registry import services as registry
    from registry.worker import image_build
    from runs.worker import execute
    from tests.registry.test_image_lifecycle import small_manifest

    project = runs.project_create(workspace=workspace, name="prepared", user=owner)
    run = runs.run_prepare(project=project, user=owner)
    assert execute(str(run.id)) == Run.Status.COMPLETED
    run.refresh_from_db()
    first = EnvironmentImage.objects.get(tag=run.image)
    assert first.engine_id.startswith("sha256:") and first.size > 0
    assert timezone.now() - first.last_used_at < timedelta(minutes=5)

    manifest = small_manifest(owner_api)
    image = registry.image_create(manifest=Manifest.objects.get(pk=manifest["id"]), user=owner)
    assert image_build(image_id=str(image.pk)) == Image.Status.SUCCEEDED
    image.refresh_from_db()
    assert image.env_image.startswith("mlportal-env:")
    assert EnvironmentImage.objects.filter(tag=image.env_image).exists()
    again = runs.run_prepare(project=project, user=owner)
    execute(str(again.id))
    assert EnvironmentImage.objects.get(tag=run.image).last_used_at > first.last_used_at  # the use moved
