"""Which images a deleted service takes with it: those nothing else uses. An image another service
runs, or names in its history (a rollback target), stays; so does every one when the workspace's
retention has a rule for unused images (that rule decides). The engine side is tested in
tests/deployments/test_delete_and_failures.py."""
from __future__ import annotations

import pytest

from deployments.models import Environment, Service, ServiceRevision
from registry.models import Image, Manifest
from retention.models import RetentionPolicy
from retention.worker import images_of_deleted_service_remove

pytestmark = pytest.mark.django_db


@pytest.fixture
def images(workspace):
    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    return [Image.objects.create(workspace=workspace, name="m", version=v, manifest=manifest, tag=f"t:{v}",
                                 status="succeeded") for v in (1, 2, 3)]


def test_only_images_nothing_else_uses_are_removed(workspace, images):
    free, running, in_history = images
    environment = Environment.objects.create(workspace=workspace, name="local")
    other = Service.objects.create(workspace=workspace, name="other", environment=environment, image=running)
    ServiceRevision.objects.create(service=other, number=1, image=in_history, image_ref=in_history.ref)
    outcome = images_of_deleted_service_remove(workspace_id=workspace.pk, image_ids=[str(i.pk) for i in images],
                                               service_name="gone")
    assert outcome["images"] == 1 and not outcome["errors"]
    assert set(Image.objects.values_list("pk", flat=True)) == {running.pk, in_history.pk}


def test_a_retention_rule_for_unused_images_decides_instead(workspace, images):
    RetentionPolicy.objects.create(workspace=workspace, unused_images_keep_last=3)
    outcome = images_of_deleted_service_remove(workspace_id=workspace.pk, image_ids=[str(i.pk) for i in images])
    assert outcome["left_to_retention"] and Image.objects.count() == 3
