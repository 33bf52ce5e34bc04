"""Deploys (and updates, deletes) whose messages the broker lost are re-sent at once when it comes
back, as runs and builds are; before, a service waited STALE_SECONDS (120 s) untouched first. The
reconciler (services_reconcile, every sweep) calls this."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments.models import Environment, Service
from deployments.reconcile import requeue_lost_deploys
from registry.models import Image, Manifest

pytestmark = pytest.mark.django_db


@pytest.fixture
def creating(workspace):
    environment = Environment.objects.create(workspace=workspace, name="local")
    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag="t:1", status="succeeded")
    return Service.objects.create(workspace=workspace, name="svc", environment=environment, image=image,
                                  status=Service.Status.CREATING)


def test_a_deploy_the_restarted_broker_lost_is_sent_again_at_once(broker, creating):
    requeue_lost_deploys(stale_seconds=120)  # the first sweep leaves its sentinel (and sends once)
    broker.client().delete("deploy")
    # The broker still holds its sentinel and the deploy is fresh: it is not sent again.
    assert requeue_lost_deploys(stale_seconds=120) == {"resent": [], "broker_forgot": False}
    assert broker.length("deploy") == 0

    broker.kill()
    broker.start()  # empty, as a Redis restarted without persistence
    outcome = requeue_lost_deploys(stale_seconds=120)
    assert outcome == {"resent": [str(creating.pk)], "broker_forgot": True}
    assert broker.length("deploy") == 1  # the deploy task is back in its queue, seconds after the restart


def test_a_service_whose_lease_is_held_is_left_to_its_worker(broker, creating):
    Service.objects.filter(pk=creating.pk).update(lock_token="00000000-0000-0000-0000-000000000001",
                                                  lock_until=timezone.now() + timedelta(seconds=60))
    broker.client().flushdb()
    assert requeue_lost_deploys(stale_seconds=120)["resent"] == []


def test_without_a_lost_broker_a_stale_transition_is_sent_again(broker, creating):
    requeue_lost_deploys(stale_seconds=120)
    Service.objects.filter(pk=creating.pk).update(updated_at=timezone.now() - timedelta(seconds=121))
    assert requeue_lost_deploys(stale_seconds=120)["resent"] == [str(creating.pk)]
