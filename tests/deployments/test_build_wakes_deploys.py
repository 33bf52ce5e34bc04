"""A deploy waiting on an image does not poll the build (issue 11): its task ends at once, and the
build's end, once committed, enqueues the deploys waiting on that image. What is published is
read from Celery's own ``before_task_publish`` signal (the real publish to the real broker)."""
from datetime import timedelta

import pytest
from celery.signals import before_task_publish
from django.db import transaction
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def published():
    sent: list[tuple[str, tuple]] = []

    def record(sender=None, headers=None, body=None, **_):
        sent.append((sender, tuple(body[0]) if body else ()))

    before_task_publish.connect(record, weak=False)
    yield sent
    before_task_publish.disconnect(record)


@pytest.fixture
def waiting_service(workspace):
    from deployments.models import Environment, Service
    from registry.models import Image, Manifest

    environment = Environment.objects.create(workspace=workspace, name="local")
    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag="mlportal/t:1",
                                 status=Image.Status.BUILDING)
    return Service.objects.create(workspace=workspace, name="svc", environment=environment, image=image)


def deploys(sent, service) -> list:
    return [args for name, args in sent if name == "deployments.tasks.deploy_service" and args == (str(service.pk),)]


def test_a_deploy_whose_image_builds_ends_without_enqueueing_itself_again(waiting_service, published):
    from deployments.models import Service
    from deployments.tasks import deploy_service

    deploy_service.run(str(waiting_service.pk))
    assert deploys(published, waiting_service) == []
    waiting_service.refresh_from_db()
    assert waiting_service.status == Service.Status.CREATING


def test_the_build_that_ends_enqueues_the_deploys_waiting_on_its_image_once_committed(waiting_service, published):
    from registry.models import Image
    from registry.worker import image_finish

    with transaction.atomic():
        assert image_finish(waiting_service.image, status=Image.Status.SUCCEEDED, image_id="sha256:" + "1" * 64)
        assert deploys(published, waiting_service) == []  # nothing before the commit
    assert deploys(published, waiting_service) == [(str(waiting_service.pk),)]


def test_a_failed_build_wakes_its_deploys_too_so_they_fail_with_the_reason(waiting_service, published):
    from deployments.models import Service
    from deployments.worker import service_deploy
    from registry.models import Image
    from registry.worker import image_finish

    image_finish(waiting_service.image, status=Image.Status.FAILED, error="pip could not find nopkg")
    assert deploys(published, waiting_service) == [(str(waiting_service.pk),)]
    assert service_deploy(service_id=str(waiting_service.pk)) == Service.Status.FAILED
    waiting_service.refresh_from_db()
    assert "pip could not find nopkg" in waiting_service.error


def test_the_reconciler_leaves_a_deploy_waiting_on_a_build_alone_until_the_wait_limit(waiting_service, published):
    from deployments.models import Service
    from deployments.reconcile import STALE_SECONDS, _requeue_lost_work
    from deployments.worker import image_wait_limit

    long_ago = timezone.now() - timedelta(seconds=STALE_SECONDS + 5)
    Service.objects.filter(pk=waiting_service.pk).update(updated_at=long_ago, created_at=long_ago)
    assert _requeue_lost_work() == 0 and deploys(published, waiting_service) == []
    past_limit = timezone.now() - timedelta(seconds=image_wait_limit() + 5)
    Service.objects.filter(pk=waiting_service.pk).update(updated_at=past_limit, created_at=past_limit)
    assert _requeue_lost_work() == 1 and deploys(published, waiting_service) == [(str(waiting_service.pk),)]
