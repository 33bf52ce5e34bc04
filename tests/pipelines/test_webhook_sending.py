"""Sending one webhook attempt against real HTTP servers on this host: no database lock is held
while the receiver takes its time, a worker lost mid-POST leaves the delivery to be tried again,
and the POST goes to the address that was checked, not to whatever a second lookup answers."""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connections
from django.utils import timezone

from pipelines import webhooks
from pipelines.models import WebhookDelivery
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration]


class Receiver:
    """An HTTP server on ``address`` that records each POST and answers 200 after ``delay`` s."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0, delay: float = 0.0):
        self.received: list[dict] = []
        self.answering = threading.Event()  # set once a POST is being answered (before the delay)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append({"headers": dict(self.headers), "body": body})
                receiver.answering.set()
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_receiver():
    receiver = Receiver(delay=2.0)
    yield receiver
    receiver.close()


def test_no_row_lock_is_held_while_the_receiver_takes_its_time(transactional_db, owner, workspace, slow_receiver):
    hook = webhooks.webhook_create(workspace=workspace, name="slow", url=f"http://127.0.0.1:{slow_receiver.port}/hook",
                                   user=owner)
    delivery = webhooks.webhook_send_test(webhook=hook, user=owner)
    outcome: list = []

    def attempt() -> None:
        try:
            outcome.append(webhooks.delivery_attempt(delivery_id=delivery.pk))
        finally:
            connections.close_all()

    sender = threading.Thread(target=attempt)
    sender.start()
    try:
        assert slow_receiver.answering.wait(10), "the receiver never got the POST"
        # The POST is in flight: the row is claimed (sending, with a lease), and not locked.
        from django.db import transaction

        with transaction.atomic():
            row = WebhookDelivery.objects.select_for_update(nowait=True).get(pk=delivery.pk)
        assert row.status == "sending" and row.next_attempt_at > timezone.now()
        assert webhooks.delivery_attempt(delivery_id=delivery.pk) is None  # another worker leaves it alone
    finally:
        sender.join(20)
    # Whoever claimed it first (this thread, or the session's worker, which the send's commit
    # also asked), it is sent once, in one attempt.
    delivery = wait_until(lambda: WebhookDelivery.objects.filter(pk=delivery.pk, status="succeeded").first(),
                          timeout=20, message="the delivery to succeed")
    assert outcome == [None] and delivery.attempts == 1
    assert len(slow_receiver.received) == 1


def test_an_attempt_whose_worker_was_lost_mid_post_is_handed_out_again(db, owner, workspace):
    receiver = Receiver()
    try:
        hook = webhooks.webhook_create(workspace=workspace, name="lost", url=f"http://127.0.0.1:{receiver.port}/hook",
                                       user=owner)
        delivery = webhooks.webhook_send_test(webhook=hook, user=owner)
        # What a worker killed during its POST leaves: claimed, its lease run out a while ago.
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status="sending", next_attempt_at=timezone.now() - webhooks.timedelta(seconds=120))
        assert str(delivery.pk) in webhooks.deliveries_due()
        assert webhooks.delivery_attempt(delivery_id=delivery.pk) is None
        delivery.refresh_from_db()
        assert delivery.status == "succeeded" and len(receiver.received) == 1
    finally:
        receiver.close()


def test_the_post_goes_to_the_checked_address_not_to_a_second_lookup(db, owner, workspace, monkeypatch):
    """DNS rebinding: the name answers an allowed address to the check, then the portal's own
    network. The receiver on the checked address gets the POST; the other one never does."""
    checked = Receiver("127.0.0.1")
    rebound = Receiver("127.0.0.3", port=checked.port)  # same port, an address the portal must not send to
    try:
        hook = webhooks.webhook_create(workspace=workspace, name="rebind", url=f"http://rebind.test:{checked.port}/hook",
                                       user=owner)
        delivery = webhooks.webhook_send_test(webhook=hook, user=owner)
        real = socket.getaddrinfo
        lookups: list[str] = []

        def attacker_dns(host, *args, **kwargs):  # the attacker's name server, first answer then the next
            if host != "rebind.test":
                return real(host, *args, **kwargs)
            lookups.append(host)
            return real("127.0.0.1" if len(lookups) == 1 else "127.0.0.3", *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", attacker_dns)
        webhooks.delivery_attempt(delivery_id=delivery.pk)
        delivery.refresh_from_db()
        assert delivery.status == "succeeded", delivery.error
        assert len(checked.received) == 1 and rebound.received == []
        assert checked.received[0]["headers"]["Host"] == f"rebind.test:{checked.port}"
        assert lookups == ["rebind.test"]  # one lookup, the checked one
    finally:
        checked.close()
        rebound.close()
