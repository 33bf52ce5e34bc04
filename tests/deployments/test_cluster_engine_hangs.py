"""A cluster environment's swarm is what the worker side saw (issue 11): the reconciler (and the
check after a create or an engine change) asks the manager engine and writes its swarm on the
row; the environment list and detail pages, the service list and page and their API reads answer
from rows. Here the cluster engine is a local socket that accepts and never answers: every read
answers at once, says since when the engine has not answered, and opens no connection to it;
the on-demand logs ask it once, within the short timeout."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone


pytestmark = pytest.mark.django_db

MANAGER = {"state": "active", "manager": True, "node_id": "n1", "nodes": 3, "managers": 1, "error": ""}



@pytest.fixture
def cluster_service(workspace, silent_engine):
    from deployments.models import Environment, Service, ServiceReplica
    from registry.models import Image, Manifest

    seen = timezone.now() - timedelta(minutes=4)
    environment = Environment.objects.create(workspace=workspace, name="swarm", kind=Environment.Kind.CLUSTER,
                                             engine_url=silent_engine.url, engine_ok=True, engine_version="27.0",
                                             engine_checked_at=seen, engine_answered_at=seen, swarm=MANAGER,
                                             swarm_checked_at=seen)
    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag="mlportal/t:1",
                                 status=Image.Status.SUCCEEDED)
    service = Service.objects.create(workspace=workspace, name="svc", environment=environment, image=image,
                                     status=Service.Status.HEALTHY)
    ServiceReplica.objects.create(service=service, number=1, container_id="c" * 64, host="127.0.0.1", port=silent_engine.port,
                                  task_id="t" * 25, node="node-1", state="running", ready=True)
    return service


def test_the_pages_and_reads_of_a_cluster_whose_engine_hangs_answer_from_rows(cluster_service, silent_engine, owner,
                                                                              page_client, owner_api):
    from deployments.models import Environment, Service
    from deployments.reconcile import services_reconcile
    from deployments.selectors import LOGS_TIMEOUT

    summary = services_reconcile()  # the worker side waits for the engine; the reads below never do
    assert silent_engine.url in summary["unreachable"]
    environment = Environment.objects.get(pk=cluster_service.environment_id)
    assert environment.engine_ok is False and environment.swarm == MANAGER  # the last swarm seen stays
    assert Service.objects.get(pk=cluster_service.pk).status == Service.Status.UNHEALTHY
    asked = silent_engine.accepted

    client = page_client(owner)
    started = time.monotonic()
    for url in ("/environments/", f"/environments/{environment.pk}/", "/services/", f"/services/{cluster_service.pk}/"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "has not answered since" in response.content.decode(), url
    detail = client.get(f"/environments/{environment.pk}/").content.decode()
    assert "a manager · 3 node(s), 1 manager(s)" in detail
    listed = owner_api.get("/api/v1/environments/").json()["results"]
    swarm = next(e for e in listed if e["name"] == "swarm")["swarm"]
    assert swarm["manager"] is True and swarm["nodes"] == 3 and swarm["checked_seconds_ago"] >= 240
    one = owner_api.get(f"/api/v1/environments/{environment.pk}/").json()
    assert one["engine"]["ok"] is False and one["swarm"]["state"] == "active"
    service = owner_api.get(f"/api/v1/services/{cluster_service.pk}/").json()
    assert service["engine"]["ok"] is False and service["containers"][0]["node"] == "node-1"
    metrics = owner_api.get(f"/api/v1/services/{cluster_service.pk}/metrics/?live=1").json()
    assert "environment 'swarm' has not answered since" in metrics["note"]
    assert time.monotonic() - started < 10  # each read ~0.1 s here; the old environment read waited 10 s per cluster
    assert silent_engine.accepted == asked, "a page or an API read opened a connection to the cluster engine"

    started = time.monotonic()
    logs = owner_api.get(f"/api/v1/services/{cluster_service.pk}/logs/").json()
    assert time.monotonic() - started < LOGS_TIMEOUT * 3  # asked on demand once, not the old 60 s
    assert "did not give the logs within" in logs["replicas"][0]["error"]


def test_a_cluster_not_checked_yet_says_so(workspace, owner, page_client, owner_api, silent_engine):
    from deployments.models import Environment

    environment = Environment.objects.create(workspace=workspace, name="fresh", kind=Environment.Kind.CLUSTER,
                                             engine_url=silent_engine.url)
    swarm = owner_api.get(f"/api/v1/environments/{environment.pk}/").json()["swarm"]
    assert swarm == {"state": "unknown", "manager": False, "nodes": 0, "managers": 0, "error": "", "checked_at": None,
                     "checked_seconds_ago": None}
    assert "not checked yet" in page_client(owner).get(f"/environments/{environment.pk}/").content.decode()
    assert silent_engine.accepted == 0


def test_setting_up_a_cluster_on_an_engine_that_never_answers_is_refused_within_the_door_timeout(
        owner_api, owner, page_client, silent_engine):
    # Setting up a cluster is the one request that asks an engine (is it a swarm manager?); it waits
    # DOOR_TIMEOUT for the answer, not the 10 s an engine read gets on the worker side.
    from deployments.checks import DOOR_TIMEOUT
    from deployments.models import Environment

    started = time.monotonic()
    response = owner_api.post("/api/v1/environments/", {"name": "prod", "kind": "cluster",
                                                        "engine_url": silent_engine.url}, format="json")
    assert time.monotonic() - started < DOOR_TIMEOUT + 1.5
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "engine_unreachable" and "engine_url" in error["fields"]
    assert f"given {DOOR_TIMEOUT} s to answer" in error["message"] and silent_engine.url in error["message"]
    started = time.monotonic()
    page = page_client(owner).post("/environments/", {"name": "prod", "kind": "cluster", "engine_url": silent_engine.url,
                                                      "publish_address": "127.0.0.1"})
    assert time.monotonic() - started < DOOR_TIMEOUT + 1.5
    assert page.status_code == 200 and f"given {DOOR_TIMEOUT} s to answer" in page.content.decode()
    assert silent_engine.accepted >= 2 and not Environment.objects.exists()


def test_moving_a_cluster_to_an_engine_that_never_answers_is_refused_and_changes_nothing(cluster_service, owner_api,
                                                                                         silent_engine):
    from deployments.checks import DOOR_TIMEOUT
    from deployments.models import Environment, Service

    Service.objects.filter(pk=cluster_service.pk).delete()
    environment = Environment.objects.get(pk=cluster_service.environment_id)
    other = type(silent_engine)()  # a second engine that never answers
    try:
        started = time.monotonic()
        response = owner_api.patch(f"/api/v1/environments/{environment.pk}/", {"engine_url": other.url,
                                                                               "description": "moved"}, format="json")
        assert time.monotonic() - started < DOOR_TIMEOUT + 1.5
        assert other.accepted == 1
    finally:
        other.close()
    assert response.status_code == 400 and response.json()["error"]["code"] == "engine_unreachable"
    after = Environment.objects.get(pk=environment.pk)
    assert (after.engine_url, after.description, after.swarm) == (silent_engine.url, "", MANAGER)
    # A local environment is not asked at the door: its engine is checked by a task after the commit.
    local = Environment.objects.create(workspace=environment.workspace, name="box", engine_url="")
    moved = owner_api.patch(f"/api/v1/environments/{local.pk}/", {"engine_url": silent_engine.url}, format="json")
    assert moved.status_code == 200 and silent_engine.accepted == 0


@pytest.mark.docker
def test_the_worker_side_records_the_swarm_of_a_real_manager(workspace):
    from compute import swarm
    from deployments.models import Environment
    from deployments.reconcile import record_swarm
    from tests.real_parts import missing_part

    try:
        status = swarm.swarm_status()
    except swarm.EngineError as exc:
        missing_part("Docker engine", str(exc))
    if not status["manager"]:
        missing_part("Docker engine", "the engine is not a swarm manager (.ci/run runs 'docker swarm init')")
    environment = Environment.objects.create(workspace=workspace, name="local-swarm", kind=Environment.Kind.CLUSTER)
    record_swarm([environment], None)
    environment.refresh_from_db()
    assert environment.swarm["manager"] is True and environment.swarm["nodes"] >= 1 and environment.swarm_checked_at
