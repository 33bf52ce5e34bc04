"""The Metrics tab and API read a snapshot the worker side took (issue 11): the reconciler and the
deploy tasks ask each replica's /metrics and write what it answered, with the time, on its row;
the page and ``GET services/<ref>/metrics/`` answer from the rows and say how old they are. A
replica (or engine) that accepts and never answers leaves the last snapshot in place, and the
reads say since when it has not answered; ``?live=1`` asks now within 1 s, never a silent engine.

The replica here is a local HTTP server answering the scoring server's own exposition
(``mlportal_runtime.server.Stats``); the real containers' figures are checked in test_lab_one_shot."""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone


pytestmark = pytest.mark.django_db


class Replica:
    """A replica's /metrics: ``scored`` requests of 4 ms each so far; ``asked`` counts the reads."""

    def __init__(self) -> None:
        from mlportal_runtime.server import Stats

        self.stats = Stats(1)
        self.asked = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.asked += 1
                body = outer.stats.prometheus(1)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def score(self, times: int) -> None:
        for _ in range(times):
            self.stats.row(0).count("score", 200, 0.004)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replica():
    server = Replica()
    yield server
    server.close()



def make_service(workspace, *, port: int, engine_ok: bool = True, name: str = "svc"):
    from deployments.models import Environment, Service, ServiceReplica
    from registry.models import Image, Manifest

    seen = timezone.now() - timedelta(minutes=3)
    environment = Environment.objects.create(workspace=workspace, name=f"env-{name}", engine_ok=engine_ok,
                                             engine_checked_at=timezone.now(), engine_answered_at=seen)
    manifest = Manifest.objects.create(workspace=workspace, name=name, version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name=name, version=1, manifest=manifest, tag=f"mlportal/t-{name}:1",
                                 status=Image.Status.SUCCEEDED)
    service = Service.objects.create(workspace=workspace, name=name, environment=environment, image=image,
                                     status=Service.Status.HEALTHY)
    ServiceReplica.objects.create(service=service, number=1, container_id="c" * 64, host="127.0.0.1", port=port,
                                  state="running", ready=True, checked_at=timezone.now())
    return service


def test_the_reconciler_takes_the_snapshot_and_the_api_answers_from_it(workspace, owner_api, replica):
    from deployments import reconcile
    from deployments.models import ServiceReplica

    service = make_service(workspace, port=replica.port)
    replica.score(3)
    assert reconcile._record_metrics() == 1  # the worker side's step of services_reconcile
    row = ServiceReplica.objects.get(service=service)
    assert row.metrics["requests"] == 3 and row.metrics_at and row.metrics_error == ""
    asked = replica.asked

    replica.score(2)  # the replica moved on; the read says what was seen, and when
    body = owner_api.get(f"/api/v1/services/{service.pk}/metrics/").json()
    assert replica.asked == asked, "the API read asked the replica"
    assert body["requests"] == 3 and body["by_code"] == {"200": 3} and body["p95_latency_ms"] == 5.0
    assert body["checked_at"] and body["checked_seconds_ago"] <= 5 and body["live"] is False
    assert f"checked {body['checked_seconds_ago']} s ago" in body["note"] and body["replicas"][0]["error"] is None

    live = owner_api.get(f"/api/v1/services/{service.pk}/metrics/?live=1").json()
    assert live["requests"] == 5 and live["live"] is True and replica.asked == asked + 1


def test_a_replica_that_never_answers_keeps_its_last_snapshot_and_the_reads_say_since_when(workspace, owner_api,
                                                                                          page_client, owner, silent_engine):
    from deployments import replica_metrics
    from deployments.models import ServiceReplica

    service = make_service(workspace, port=silent_engine.port)
    seen = timezone.now() - timedelta(minutes=5)
    ServiceReplica.objects.filter(service=service).update(metrics={"requests": 7, "by_code": {"200": 7}, "errors": 0,
                                                                   "latency_sum_ms": 28.0, "latency_count": 7,
                                                                   "buckets": [[0.005, 7], [None, 7]]}, metrics_at=seen)
    started = time.monotonic()
    assert replica_metrics.record(ServiceReplica.objects.filter(service=service)) == 0
    assert time.monotonic() - started < replica_metrics.SNAPSHOT_TIMEOUT + 2
    row = ServiceReplica.objects.get(service=service)
    assert row.metrics["requests"] == 7 and row.metrics_at == seen and "did not answer /metrics within 1 s" in row.metrics_error
    asked = silent_engine.accepted

    started = time.monotonic()
    body = owner_api.get(f"/api/v1/services/{service.pk}/metrics/").json()
    page = page_client(owner).get(f"/services/{service.pk}/").content.decode()
    assert time.monotonic() - started < 2  # the default read answers from rows; the old code waited 3 s per replica
    assert silent_engine.accepted == asked, "a read opened a connection to the replica"
    assert body["requests"] == 7 and body["mean_latency_ms"] == 4.0 and body["p95_latency_ms"] == 5.0
    assert body["checked_seconds_ago"] >= 300
    since = f"last answer: {timezone.localtime(seen):%Y-%m-%d %H:%M:%S}"
    assert since in body["note"] and since in page and "did not answer /metrics" in page


def test_a_live_read_never_asks_an_engine_that_is_down_and_says_since_when(workspace, owner_api, silent_engine):
    from deployments.models import Environment

    service = make_service(workspace, port=silent_engine.port, engine_ok=False)
    answered = Environment.objects.get(pk=service.environment_id).engine_answered_at
    started = time.monotonic()
    body = owner_api.get(f"/api/v1/services/{service.pk}/metrics/?live=1").json()
    assert time.monotonic() - started < 1 and silent_engine.accepted == 0
    assert body["live"] is False and body["checked_at"] is None
    assert (f"The Docker engine of environment 'env-svc' has not answered since "
            f"{timezone.localtime(answered):%Y-%m-%d %H:%M:%S}") in body["note"]


def test_a_live_read_of_a_silent_replica_answers_within_its_short_timeout(workspace, owner_api, silent_engine):
    from deployments.replica_metrics import LIVE_TIMEOUT

    service = make_service(workspace, port=silent_engine.port)
    started = time.monotonic()
    body = owner_api.get(f"/api/v1/services/{service.pk}/metrics/?live=1").json()
    assert time.monotonic() - started < LIVE_TIMEOUT + 1.5
    assert "replica 1 did not answer /metrics within 1 s" in body["replicas"][0]["error"]
    assert "Replica 1 did not answer" in body["note"]


def test_the_reconciler_leaves_replicas_on_a_silent_engine_alone(workspace, silent_engine):
    from deployments import reconcile
    from deployments.models import ServiceReplica

    service = make_service(workspace, port=silent_engine.port, engine_ok=False)
    assert reconcile._record_metrics() == 0 and silent_engine.accepted == 0
    assert ServiceReplica.objects.get(service=service).metrics_checked_at is None


def test_outsiders_get_404_for_the_metrics(workspace, outsider_api, reader_api, replica):
    service = make_service(workspace, port=replica.port)
    assert outsider_api.get(f"/api/v1/services/{service.pk}/metrics/").status_code == 404
    assert reader_api.get(f"/api/v1/services/{service.pk}/metrics/").status_code == 200
