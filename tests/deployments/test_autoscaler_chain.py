"""The autoscaler's one chain: a round ticks every autoscaled service whose refresh period is up
(several at once), sends one message for the next round whatever the number of services, and
ends once another chain took its services; starting or reviving a chain gives it every autoscaled
service. The tick itself (metrics, samples, decisions) is recorded here, not run: the end-to-end
autoscale tests (tests/gateway/test_autoscale.py, test_cluster_autoscale.py) run it on real
replicas with the real worker."""
from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from deployments import autoscaling, tasks
from deployments.models import Environment, Service, ServiceLoad
from registry.models import Image, Manifest


def _services(workspace, owner, count: int, *, token=None, **fields) -> list[Service]:
    environment = Environment.objects.create(workspace=workspace, name="local")
    manifest = Manifest.objects.create(workspace=workspace, name="churn", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="churn", version=1, manifest=manifest, tag="t:1", status="succeeded")
    return [Service.objects.create(workspace=workspace, name=f"auto{n}", environment=environment, image=image,
                                   status="healthy", created_by=owner, autoscale_enabled=True, autoscale_token=token,
                                   **fields) for n in range(count)]


@pytest.fixture
def ticks(monkeypatch):
    """Records each tick (service id, thread) instead of running it; a tick takes 0.3 s."""
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def tick(*, service_id, token):
        with lock:
            seen.append((service_id, threading.current_thread().name))
        time.sleep(0.3)
        return float(Service.objects.get(pk=service_id).autoscale_refresh_seconds)

    monkeypatch.setattr(autoscaling, "autoscale_tick", tick)
    return seen


@pytest.fixture
def sent(monkeypatch):
    messages: list[tuple[tuple, float]] = []
    monkeypatch.setattr(tasks.autoscale_services, "apply_async", lambda args, countdown: messages.append((args, countdown)))
    return messages


def test_one_round_ticks_every_due_service_at_once_and_sends_one_message(transactional_db, workspace, owner, ticks, sent):
    token = str(uuid.uuid4())
    services = _services(workspace, owner, 3, token=token)
    started = time.monotonic()
    tasks.autoscale_services.run(token)
    took = time.monotonic() - started
    assert sorted(sid for sid, _ in ticks) == sorted(str(s.pk) for s in services)
    assert took < 0.85  # three 0.3 s ticks side by side (one after the other: 0.9 s at least)
    assert len({thread for _, thread in ticks}) == 3
    assert len(sent) == 1  # one message for the next round, not one per service
    (token_sent, schedule), countdown = sent[0]
    assert token_sent == token and set(schedule) == {str(s.pk) for s in services}
    assert countdown == pytest.approx(1.0 - took, abs=0.05)  # the round's own time came off the 1 s refresh


def test_a_service_is_ticked_only_when_its_refresh_period_is_up(transactional_db, workspace, owner, ticks, sent):
    token = str(uuid.uuid4())
    fast, slow = _services(workspace, owner, 2, token=token)
    Service.objects.filter(pk=slow.pk).update(autoscale_refresh_seconds=5)
    now = time.time()
    countdown, schedule = autoscaling.autoscale_round(token=token, schedule={str(fast.pk): now - 0.1, str(slow.pk): now + 3})
    assert [sid for sid, _ in ticks] == [str(fast.pk)]
    assert schedule[str(slow.pk)] == pytest.approx(now + 3)
    assert schedule[str(fast.pk)] == pytest.approx(now + 1, abs=0.2)
    assert 0.5 < countdown <= 1.0


def test_a_tick_that_raises_stops_no_other_service(transactional_db, workspace, owner, monkeypatch, sent):
    token = str(uuid.uuid4())
    good, bad = _services(workspace, owner, 2, token=token)

    def tick(*, service_id, token):
        if service_id == str(bad.pk):
            raise RuntimeError("a replica answered nonsense")
        return 1.0

    monkeypatch.setattr(autoscaling, "autoscale_tick", tick)
    countdown, schedule = autoscaling.autoscale_round(token=token, schedule={})
    assert set(schedule) == {str(good.pk), str(bad.pk)} and countdown is not None


def test_the_chain_ends_when_another_took_its_services_or_autoscaling_went_off(transactional_db, workspace, owner, ticks,
                                                                               sent):
    token = str(uuid.uuid4())
    first, second = _services(workspace, owner, 2, token=token)
    Service.objects.filter(pk=first.pk).update(autoscale_token=uuid.uuid4())
    Service.objects.filter(pk=second.pk).update(autoscale_enabled=False)
    tasks.autoscale_services.run(token)
    assert ticks == [] and sent == []


def test_turning_autoscaling_on_gives_the_new_chain_every_autoscaled_service(db, workspace, owner,
                                                                             django_capture_on_commit_callbacks):
    old = str(uuid.uuid4())
    first, second = _services(workspace, owner, 2, token=old)
    Service.objects.filter(pk=second.pk).update(autoscale_enabled=False, autoscale_token=None)
    with django_capture_on_commit_callbacks() as callbacks:
        second.refresh_from_db()
        autoscaling.service_set_autoscale(service=second, user=owner, given={"enabled": True})
    assert len(callbacks) == 1  # one chain started
    tokens = set(Service.objects.values_list("autoscale_token", flat=True))
    assert len(tokens) == 1 and str(tokens.pop()) != old  # the first service moved to it: the old chain ends


def test_the_reconciler_revives_one_chain_for_every_service_whose_samples_stopped(db, workspace, owner,
                                                                                  django_capture_on_commit_callbacks):
    services = _services(workspace, owner, 3, token=uuid.uuid4())
    long_ago = timezone.now() - timedelta(minutes=5)
    for service in services:
        ServiceLoad.objects.create(service=service, at=long_ago, replicas=1, workers=1, busy=0, utilization=0, desired=1)
    with django_capture_on_commit_callbacks() as callbacks:
        assert autoscaling.revive_chains() == 1
    assert len(callbacks) == 1 and Service.objects.values("autoscale_token").distinct().count() == 1
    for service in services:  # fresh samples: nothing to revive
        ServiceLoad.objects.create(service=service, at=timezone.now(), replicas=1, workers=1, busy=0, utilization=0, desired=1)
    with django_capture_on_commit_callbacks() as callbacks:
        assert autoscaling.revive_chains() == 0
    assert callbacks == []


def test_the_chain_goes_to_the_maintenance_queue():
    from mlportal.celery import app

    app.loader.import_default_modules()
    assert app.amqp.router.route({}, "deployments.tasks.autoscale_services")["queue"].name == "celery"
    # The old per-service tick's messages, still in a broker after an upgrade, are adopted there too.
    assert app.amqp.router.route({}, "deployments.tasks.autoscale_service")["queue"].name == "celery"
    assert "deployments.tasks.autoscale_service" in app.tasks


def test_an_old_per_service_tick_hands_every_service_to_one_new_chain_once(db, workspace, owner,
                                                                         django_capture_on_commit_callbacks):
    """Seen after the upgrade to one chain: the worker refused the messages the per-service ticks
    had queued ('Received unregistered task ... autoscale_service') and autoscaling stopped until
    the reconciler's next sweep. The first old message now starts the new chain; the others end."""
    old_first, old_second = str(uuid.uuid4()), str(uuid.uuid4())
    first, = _services(workspace, owner, 1, token=old_first)
    second = Service.objects.create(workspace=workspace, name="auto-b", environment=first.environment,
                                    image=first.image, status="healthy", created_by=owner, autoscale_enabled=True,
                                    autoscale_token=old_second)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert tasks.autoscale_service.run(str(first.pk), old_first) is True
    assert len(callbacks) == 1  # one chain started
    tokens = set(Service.objects.values_list("autoscale_token", flat=True))
    assert len(tokens) == 1 and {str(t) for t in tokens}.isdisjoint({old_first, old_second})
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert tasks.autoscale_service.run(str(second.pk), old_second) is False  # its service moved on
        assert tasks.autoscale_service.run("not-an-id", old_second) is False
    assert callbacks == []
