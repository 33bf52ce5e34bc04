"""Outgoing webhooks with the real parts: the Celery worker POSTs to a real HTTP server started
here on 127.0.0.1, which checks the signature; its first answer is a 500, so the delivery is
retried (after the back-off) and then succeeds; a real event (a model registered) is sent too."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines.models import WebhookDelivery
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration]


class Receiver:
    """An HTTP server that records each POST and answers the status codes it is told, in order."""

    def __init__(self, answers: list[int]):
        self.answers, self.received = list(answers), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append({"headers": dict(self.headers), "body": body})
                code = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(answers):
        made.append(Receiver(answers))
        return made[-1]

    yield make
    for r in made:
        r.close()


def verified(secret: str, request: dict) -> dict:
    expected = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["X-MLPortal-Signature-256"], expected)
    return json.loads(request["body"])


def test_a_delivery_is_signed_retried_after_a_500_and_logged(celery_worker, receiver, owner_api, register_model_api):
    server = receiver([500])
    created = owner_api.post("/api/v1/webhooks/", {"name": "ci", "url": server.url}, format="json").json()
    secret = created["secret"]
    test = owner_api.post("/api/v1/webhooks/ci/test/")
    assert test.status_code == 202
    delivery = wait_until(lambda: WebhookDelivery.objects.filter(pk=test.json()["id"], status="succeeded").first(),
                          timeout=60, message="the test delivery to succeed after its retry")
    assert delivery.attempts == 2 and [a["response_code"] for a in delivery.log] == [500, 200]
    assert delivery.log[0]["error"] == "the receiver answered 500"
    first, second = (verified(secret, r) for r in server.received)
    assert first["event"] == second["event"] == "ping" and (first["attempt"], second["attempt"]) == (1, 2)
    assert server.received[1]["headers"]["X-MLPortal-Delivery"] == str(delivery.pk)
    log = owner_api.get("/api/v1/webhooks/ci/deliveries/").json()["results"]
    assert (log[0]["status"], log[0]["response_code"], log[0]["attempts"]) == ("succeeded", 200, 2)
    assert log[0]["latency_ms"] is not None

    # A real event: a model version registered, found by the scan, delivered by the worker.
    from pipelines.tasks import scan_webhook_events

    assert register_model_api(owner_api).status_code == 201
    assert scan_webhook_events.run() >= 1
    wait_until(lambda: len(server.received) >= 3, timeout=60, message="the model.registered delivery")
    event = verified(secret, server.received[2])
    assert (event["event"], event["data"]["ref"]) == ("model.registered", "model.pkl:1")
