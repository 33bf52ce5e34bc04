"""Pages and API reads never wait on an engine (issue 11). An environment's engine URL points at a
local socket that accepts connections and never answers: the worker side (the reconciler) finds
out and records it; the environment list and detail pages, the service list and the service
page, and their API reads all answer at once, say the engine has not answered since a given
time, and open no connection to that engine while doing so (the socket counts them)."""
import pytest


pytestmark = pytest.mark.django_db



@pytest.fixture
def stuck_service(workspace, owner, silent_engine):
    from deployments import services
    from deployments.models import Service, ServiceReplica
    from registry.models import Image, Manifest

    environment = services.environment_create(workspace=workspace, name="far", user=owner,
                                              engine_url=silent_engine.url)
    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag="mlportal/t:1",
                                 status=Image.Status.SUCCEEDED)
    service = Service.objects.create(workspace=workspace, name="svc", environment=environment, image=image,
                                     status=Service.Status.HEALTHY)
    ServiceReplica.objects.create(service=service, number=1, container_id="c" * 64, host="127.0.0.1",
                                  port=silent_engine.port, state="running", ready=True)
    return service


def test_pages_and_reads_answer_from_rows_while_the_engine_never_answers(stuck_service, silent_engine, owner, page_client,
                                                                         owner_api):
    from deployments.models import Environment
    from deployments.reconcile import services_reconcile

    summary = services_reconcile()  # the worker side: it waits for the engine (a few seconds), the pages never do
    assert f"tcp://127.0.0.1:{silent_engine.port}" in summary["unreachable"]
    environment = Environment.objects.get(pk=stuck_service.environment_id)
    assert environment.engine_ok is False and environment.engine_checked_at and environment.engine_answered_at is None
    assert "timed out" in environment.engine_error
    asked = silent_engine.accepted
    assert asked >= 1  # the reconciler did try it

    client = page_client(owner)
    for url in ("/environments/", f"/environments/{environment.pk}/", "/services/", f"/services/{stuck_service.pk}/"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "has not answered since" in response.content.decode(), url
    environments = owner_api.get("/api/v1/environments/").json()["results"]
    engine = next(e for e in environments if e["name"] == "far")["engine"]
    assert engine["ok"] is False and engine["checked_at"] and engine["answered_at"] is None
    service = owner_api.get(f"/api/v1/services/{stuck_service.pk}/").json()
    assert service["engine"]["ok"] is False
    replica = service["containers"][0]
    assert replica["state"] == "unknown" and "did not answer" in replica["state_error"]
    for live in ("", "?live=1"):  # the metrics snapshot; a live read does not ask a silent engine either
        metrics = owner_api.get(f"/api/v1/services/{stuck_service.pk}/metrics/{live}").json()
        assert "environment 'far' has not answered since" in metrics["note"] and metrics["checked_at"] is None
    assert silent_engine.accepted == asked, "a page or an API read opened a connection to the engine"


def test_once_it_answered_the_pages_say_since_when_it_has_not(stuck_service, silent_engine, owner, page_client):
    from datetime import timedelta

    from django.utils import timezone

    from deployments.models import Environment
    from deployments.reconcile import services_reconcile

    answered = timezone.now() - timedelta(minutes=7)
    Environment.objects.filter(pk=stuck_service.environment_id).update(engine_ok=True, engine_answered_at=answered,
                                                                       engine_checked_at=answered)
    services_reconcile()
    environment = Environment.objects.get(pk=stuck_service.environment_id)
    assert environment.engine_ok is False and environment.engine_answered_at == answered
    page = page_client(owner).get(f"/environments/{environment.pk}/").content.decode()
    assert f"has not answered since {timezone.localtime(answered):%Y-%m-%d %H:%M:%S}" in page


def test_the_logs_of_a_replica_on_a_silent_engine_answer_within_the_short_timeout(stuck_service, silent_engine, owner_api):
    import time

    from deployments.selectors import LOGS_TIMEOUT

    started = time.monotonic()
    logs = owner_api.get(f"/api/v1/services/{stuck_service.pk}/logs/").json()
    assert time.monotonic() - started < LOGS_TIMEOUT * 3  # one engine attempt (client set-up and the call), not per replica
    assert "did not give the logs within" in logs["replicas"][0]["error"]
