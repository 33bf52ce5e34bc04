"""Outgoing webhooks, request side and event scan: the secret shown once, bad URLs and events
refused naming the field (nothing created), owners only, outsiders 404; what happened becomes one
delivery per webhook, event and object, only for the events a webhook asked for."""
from __future__ import annotations

import pytest

from pipelines import webhooks
from pipelines.models import Webhook, WebhookDelivery

pytestmark = pytest.mark.django_db


def test_it_creates_a_webhook_and_shows_its_secret_once(owner_api):
    created = owner_api.post("/api/v1/webhooks/", {"name": "chatops", "url": "https://hooks.example.com/x",
                                                   "events": ["pipeline.finished", "model.registered"]}, format="json")
    assert created.status_code == 201, created.json()
    assert len(created.json()["secret"]) >= 40
    shown = owner_api.get("/api/v1/webhooks/chatops/").json()
    assert "secret" not in shown and shown["events"] == ["model.registered", "pipeline.finished"]
    assert [w["name"] for w in owner_api.get("/api/v1/webhooks/").json()["results"]] == ["chatops"]


@pytest.mark.parametrize("payload, field, words", [
    ({"url": "ftp://files.example.com/x"}, "url", "is not an http(s) URL"),
    ({"url": "javascript:alert(1)"}, "url", "is not an http(s) URL"),
    ({"url": "https://user:pw@hooks.example.com/"}, "url", "no user name or password"),
    ({"url": "https://hooks.example.com/", "events": ["run.started"]}, "events", "Unknown event 'run.started'"),
])
def test_bad_input_is_a_400_naming_the_field_and_creates_nothing(owner_api, payload, field, words):
    answer = owner_api.post("/api/v1/webhooks/", {"name": "chatops", **payload}, format="json")
    assert answer.status_code == 400 and field in answer.json()["error"]["fields"], answer.json()
    assert words in answer.json()["error"]["message"]
    assert not Webhook.objects.exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/", "http://10.1.2.3/hook", "http://169.254.169.254/latest/",
                                 "http://[::1]:5432/", "http://0.0.0.0:8000/", "http://192.168.0.1/"])
def test_a_webhook_may_not_point_at_the_portals_own_network(owner_api, settings, url):
    """Tried as a contributor would: a webhook to Redis, PostgreSQL or the metadata address made the
    portal POST inside its own network. Only addresses the administrator lists are allowed."""
    settings.MLPORTAL_WEBHOOK_HOSTS = []
    answer = owner_api.post("/api/v1/webhooks/", {"name": "probe", "url": url}, format="json")
    assert answer.status_code == 400 and "url" in answer.json()["error"]["fields"], answer.json()
    assert "MLPORTAL_WEBHOOK_HOSTS" in answer.json()["error"]["message"]
    assert not Webhook.objects.exists()
    settings.MLPORTAL_WEBHOOK_HOSTS = ["10.0.0.0/8", "127.0.0.1"]
    if url in ("http://10.1.2.3/hook", "http://127.0.0.1:6379/"):
        assert owner_api.post("/api/v1/webhooks/", {"name": "probe", "url": url}, format="json").status_code == 201


def test_a_delivery_to_an_address_no_longer_allowed_is_not_sent(owner, workspace, settings):
    """A name may resolve to a private address after the webhook was made: each attempt checks."""
    hook = webhooks.webhook_create(workspace=workspace, name="later", url="http://127.0.0.1:9/hook", user=owner)
    delivery = webhooks.webhook_send_test(webhook=hook, user=owner)
    settings.MLPORTAL_WEBHOOK_HOSTS = []
    webhooks.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.response_code is None and delivery.error.startswith("not sent:") and "MLPORTAL_WEBHOOK_HOSTS" in delivery.error


def test_only_owners_manage_webhooks_and_outsiders_see_none(owner_api, contributor_api, outsider_api):
    assert contributor_api.post("/api/v1/webhooks/", {"name": "x", "url": "https://h.example.com/"},
                                format="json").status_code == 403
    hook = owner_api.post("/api/v1/webhooks/", {"name": "chatops", "url": "https://h.example.com/"}, format="json").json()
    assert contributor_api.patch(f"/api/v1/webhooks/{hook['id']}/", {"enabled": False}, format="json").status_code == 403
    assert contributor_api.post(f"/api/v1/webhooks/{hook['id']}/test/").status_code == 202  # contributors may test
    for path in (f"/api/v1/webhooks/{hook['id']}/", f"/api/v1/webhooks/{hook['id']}/deliveries/"):
        assert outsider_api.get(path).status_code == 404
    assert outsider_api.post(f"/api/v1/webhooks/{hook['id']}/test/").status_code == 404
    assert outsider_api.get("/api/v1/webhooks/").json()["count"] == 0
    assert WebhookDelivery.objects.count() == 1


def test_what_happened_becomes_one_delivery_per_webhook_event_and_object(owner, owner_api, outsider, outsider_api,
                                                                         workspace, project, finished_run, recorded_service):
    everything = webhooks.webhook_create(workspace=workspace, name="all", url="https://h.example.com/a", user=owner)
    only_models = webhooks.webhook_create(workspace=workspace, name="models", url="https://h.example.com/m", user=owner,
                                          events=["model.registered"])
    theirs = outsider_api.post("/api/v1/webhooks/", {"name": "theirs", "url": "https://h.example.com/o"}, format="json")
    assert theirs.status_code == 201
    run = finished_run(project, owner, metrics={"acc": 0.9})
    recorded_service(run=run)  # a model version (made by the run), an image, a service revision-less row
    assert webhooks.events_scan() == 3  # all: run.finished + model.registered; models: model.registered
    assert webhooks.events_scan() == 0  # read again: sent once
    events = sorted((d.webhook.name, d.event) for d in WebhookDelivery.objects.select_related("webhook"))
    assert events == [("all", "model.registered"), ("all", "run.finished"), ("models", "model.registered")]
    delivery = WebhookDelivery.objects.get(webhook=everything, event="run.finished")
    assert delivery.payload["data"]["status"] == "completed" and delivery.payload["workspace"] == "team"
    assert not WebhookDelivery.objects.filter(webhook__workspace__name="elsewhere").exists()
    assert only_models.deliveries.count() == 1


def test_the_signature_is_hmac_sha256_of_the_body():
    import hashlib
    import hmac

    body = b'{"event":"ping"}'
    assert webhooks.sign("s3cret", body) == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()


def test_a_drift_signal_starts_the_pipelines_that_retrain_on_drift_and_is_sent_as_drift_detected(
        owner, workspace, project, recorded_service):
    from pipelines import services

    service = recorded_service()
    watching = services.pipeline_create(workspace=workspace, user=owner, name="on-drift", project=project,
                                        script="train.py", service=service, trigger_on_drift=True)
    services.pipeline_create(workspace=workspace, user=owner, name="by-hand", project=project, script="train.py",
                             service=service)
    hook = webhooks.webhook_create(workspace=workspace, name="drift", url="https://h.example.com/d", user=owner,
                                   events=["drift.detected"])
    signal, runs = services.drift_signal_record(service=service, detail={"feature": "age", "psi": 0.31})
    assert [(r.pipeline_id, r.trigger, r.trigger_detail) for r in runs] == [(watching.pk, "drift", "feature=age, psi=0.31")]
    assert webhooks.events_scan() == 1
    delivery = hook.deliveries.get()
    assert (delivery.event, delivery.payload["data"]["service"], delivery.payload["data"]["detail"]) == (
        "drift.detected", "churnpred", {"feature": "age", "psi": 0.31})


def test_model_monitorings_drift_event_starts_the_pipelines_that_retrain_on_drift(owner, workspace, project,
                                                                                  recorded_service, monkeypatch):
    from types import SimpleNamespace

    from monitoring.models import DriftReport
    from monitoring.signals import drift_detected
    from pipelines import services, tasks
    from pipelines.models import DriftSignal, PipelineRun

    service = recorded_service()
    services.pipeline_create(workspace=workspace, user=owner, name="on-drift", project=project, script="train.py",
                             service=service, trigger_on_drift=True)
    # The broker hop is skipped here: the task's body runs at once.
    monkeypatch.setattr(tasks.drift_trigger, "delay", lambda *args: tasks.drift_trigger.run(*args))
    report = SimpleNamespace(pk=7, share_drifted=0.5, features=[{"name": "age", "drifted": True},
                                                                {"name": "state", "drifted": False}])
    drift_detected.send(sender=DriftReport, service=service, report=report, trigger="schedule")
    signal = DriftSignal.objects.get()
    assert signal.detail == {"report": 7, "share_drifted": 0.5, "features": ["age"], "trigger": "schedule"}
    run = PipelineRun.objects.get()
    assert (run.trigger, run.status) == ("drift", "queued") and "features=['age']" in run.trigger_detail
