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

from tests.helpers import SilentEngine

pytestmark = pytest.mark.django_db

MANAGER = {"state": "active", "manager": True, "node_id": "n1", "nodes": 3, "managers": 1, "error": ""}


@pytest.fixture
def silent():
    engine = SilentEngine()
    yield engine
    engine.close()


@pytest.fixture
def cluster_service(workspace, silent):
    from deployments.models import Environment, Service, ServiceReplica
    from registry.models import Image, Manifest

    seen = timezone.now() - timedelta(minutes=4)
    environment = Environment.objects.create(workspace=workspace, name="swarm", kind=Environment.Kind.CLUSTER,
                                             engine_url=silent.url, engine_ok=True, engine_version="27.0",
                                             engine_checked_at=seen, engine_answered_at=seen, swarm=MANAGER,
                                             swarm_checked_at=seen)
    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag="mlportal/t:1",
                                 status=Image.Status.SUCCEEDED)
    service = Service.objects.create(workspace=workspace, name="svc", environment=environment, image=image,
                                     status=Service.Status.HEALTHY)
    ServiceReplica.objects.create(service=service, number=1, container_id="c" * 64, host="127.0.0.1", port=silent.port,
                                  task_id="t" * 25, node="node-1", state="running", ready=True)
    return service


def test_the_pages_and_reads_of_a_cluster_whose_engine_hangs_answer_from_rows(cluster_service, silent, owner,
                                                                              page_client, owner_api):
    from deployments.models import Environment, Service
    from deployments.reconcile import services_reconcile
    from deployments.selectors import LOGS_TIMEOUT

    summary = services_reconcile()  # the worker side waits for the engine; the reads below never do
    assert silent.url in summary["unreachable"]
    environment = Environment.objects.get(pk=cluster_service.environment_id)
    assert environment.engine_ok is False and environment.swarm == MANAGER  # the last swarm seen stays
    assert Service.objects.get(pk=cluster_service.pk).status == Service.Status.UNHEALTHY
    asked = silent.accepted

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
    assert silent.accepted == asked, "a page or an API read opened a connection to the cluster engine"

    started = time.monotonic()
    logs = owner_api.get(f"/api/v1/services/{cluster_service.pk}/logs/").json()
    assert time.monotonic() - started < LOGS_TIMEOUT * 3  # asked on demand once, not the old 60 s
    assert "did not give the logs within" in logs["replicas"][0]["error"]


def test_a_cluster_not_checked_yet_says_so(workspace, owner, page_client, owner_api, silent):
    from deployments.models import Environment

    environment = Environment.objects.create(workspace=workspace, name="fresh", kind=Environment.Kind.CLUSTER,
                                             engine_url=silent.url)
    swarm = owner_api.get(f"/api/v1/environments/{environment.pk}/").json()["swarm"]
    assert swarm == {"state": "unknown", "manager": False, "nodes": 0, "managers": 0, "error": "", "checked_at": None,
                     "checked_seconds_ago": None}
    assert "not checked yet" in page_client(owner).get(f"/environments/{environment.pk}/").content.decode()
    assert silent.accepted == 0


def test_moving_a_cluster_to_another_engine_forgets_the_old_swarm(cluster_service, owner):
    from deployments.models import Environment, Service
    from deployments.services import environment_update

    Service.objects.filter(pk=cluster_service.pk).delete()
    environment = Environment.objects.get(pk=cluster_service.environment_id)
    environment_update(environment=environment, user=owner, changes={"engine_url": "tcp://127.0.0.1:2"})
    environment.refresh_from_db()
    assert environment.swarm == {} and environment.swarm_checked_at is None


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
