"""The scoring paths below uvicorn's ASGI cycle (gateway.server) and the keep-alive client
(gateway.upstream) in the real ASGI server, against hostile input: malformed requests, huge heads,
slow and vanishing clients, pipelined requests mixing scoring and pages, and replicas (real sockets
on this host, recorded as a service's replicas) that close mid-answer or answer garbage. Each gets
a clear answer, and the server keeps answering."""
from __future__ import annotations

import re
import select
import socket
import socketserver
import threading
import time

import pytest

from tests.helpers import raw_exchange

pytestmark = [pytest.mark.integration]

KEY = "fast-path-key-0123456789"


class FakeReplica(socketserver.ThreadingTCPServer):
    """A replica on a free port: /ready answers 200; /score answers as ``mode`` says."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.seen: list[bytes] = []  # the bodies of the scoring requests it got
        super().__init__(("127.0.0.1", 0), _ReplicaHandler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _ReplicaHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                byte = self.rfile.read(1)
                if not byte:
                    return
                head += byte
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = self.rfile.read(length) if length else b""
            path = head.split(b" ", 2)[1]
            if path != b"/ready":
                self.server.seen.append(body)
            if path == b"/ready" or self.server.mode == "ok":
                body = b'{"ready": true}' if path == b"/ready" else b'"0"'
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                continue
            if self.server.mode == "close_mid_answer":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n[1, 2")
            elif self.server.mode == "garbage":
                self.wfile.write(b"\x00\x01 this is not HTTP at all\r\n\r\n")
            self.wfile.flush()
            return  # and close


def _service(workspace, owner, name: str, replica: FakeReplica):
    from deployments.models import Environment, Service, ServiceReplica, ServiceRevision
    from registry.models import Image, Manifest

    environment, _ = Environment.objects.get_or_create(workspace=workspace, name="local")
    manifest = Manifest.objects.create(workspace=workspace, name=name, version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name=name, version=1, manifest=manifest, status="succeeded",
                                 tag=f"fake/{name}:1")
    service = Service.objects.create(workspace=workspace, name=name, environment=environment, image=image,
                                     status="healthy", primary_key=KEY, secondary_key=KEY + "-2", proxy_key="")
    revision = ServiceRevision.objects.create(service=service, number=1, image=image, image_ref=image.ref, reason="create")
    ServiceReplica.objects.create(service=service, number=1, container_id=f"fake-{name}", host="127.0.0.1",
                                  port=replica.port, revision=revision)
    return service


def _exchange(port: int, data: bytes, *, timeout: float = 10) -> bytes:
    """Sends ``data`` on a new connection and returns what came back until the server closed it
    (or ``timeout``)."""
    return raw_exchange(port, data, timeout=timeout)[0]


def _score_head(name: str, length: int, key: str = KEY) -> bytes:
    return (f"POST /api/v1/services/{name}/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def _wait_for_status(gateway, name: str, status: int, timeout: float = 10) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        answer = gateway.score(name, {"a": 1}, KEY)
        if answer[0] == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_malformed_requests_and_huge_heads_are_refused_and_the_server_keeps_answering(gateway):
    answer = _exchange(gateway.port, b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Invalid HTTP request" in answer
    answer = _exchange(gateway.port, b"POST /api/v1/services/x/score HTTP/1.1\r\nContent-Length: 1\r\n"
                                     b"Content-Length: 2\r\n\r\nab")
    assert answer.startswith(b"HTTP/1.1 400 ")
    # A head past 64 KiB is refused before it is held whole, on a scoring path or a page.
    for path in (b"/api/v1/services/x/score", b"/login/"):
        answer = _exchange(gateway.port, b"GET " + path + b" HTTP/1.1\r\nX-Big: " + b"a" * (200 * 1024) + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 431 ") and b"larger than 64 KiB" in answer, answer[:200]
    many = b"".join(b"X-F%d: v\r\n" % i for i in range(200))
    answer = _exchange(gateway.port, b"GET /api/v1/services/x/score HTTP/1.1\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ") and b"more than 128 header fields" in answer
    assert gateway.request("GET", "/login/")[0] == 200


def test_pipelined_scoring_requests_and_pages_are_answered_in_order_on_one_connection(gateway):
    one = b"POST /api/v1/services/nosuch/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
    page = b"GET /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    last = (b"POST /api/v1/services/nosuch/score HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Length: 2\r\n\r\n{}")
    answer = _exchange(gateway.port, one + page + last)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"401", b"200", b"401"], answer[:500]
    assert answer.index(b"needs a key") < answer.index(b"<html") < answer.rindex(b"needs a key")


def test_a_body_that_does_not_arrive_is_answered_408_and_a_client_gone_mid_body_costs_nothing(gateway, tmp_path):
    from django.db import connection

    from tests.gateway.conftest import start_server, stop_server

    server = start_server(dict(connection.settings_dict), tmp_path / "slow-body.log",
                          extra_env={"MLPORTAL_GATEWAY_BODY_TIMEOUT": "1"})
    try:
        started = time.monotonic()
        answer = _exchange(server.port, _score_head("nosuch", 100, key="any") + b'{"a": ', timeout=10)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 1 s" in answer, answer[:300]
        assert b"connection: close" in answer and time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", server.port)) as sock:  # gone before its body came
            sock.sendall(_score_head("nosuch", 100, key="any") + b"{")
        assert server.request("GET", "/login/")[0] == 200
        assert "Traceback" not in server.log()
    finally:
        stop_server(server)


def test_a_head_trickled_byte_by_byte_is_answered_408_and_a_silent_connection_is_closed(gateway, tmp_path):
    """A client that sends a head a byte at a time (each byte well inside the keep-alive timeout),
    or connects and sends nothing, holds its connection no longer than the head deadline."""
    from django.db import connection

    from tests.gateway.conftest import start_server, stop_server

    server = start_server(dict(connection.settings_dict), tmp_path / "slow-head.log",
                          extra_env={"MLPORTAL_GATEWAY_HEAD_TIMEOUT": "1.5"})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            started = time.monotonic()
            answer = b""
            for byte in b"GET /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break  # the server ended the connection: what it answered is in the buffer
                if select.select([sock], [], [], 0.05)[0]:
                    break  # the server answered: read it below
            sock.settimeout(5)
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except (socket.timeout, ConnectionResetError):
                pass
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
        assert b"did not arrive within 1.5 s" in answer and b"connection: close" in answer
        assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:  # says nothing at all
            started = time.monotonic()
            assert sock.recv(65536) == b""  # closed by the server, with nothing to answer
            assert 1.0 < time.monotonic() - started < 5
        # A head that comes whole is answered as ever, and so is one on a connection kept alive.
        assert server.request("GET", "/login/")[0] == 200
        assert "Traceback" not in server.log()
    finally:
        stop_server(server)


def _trickle(port: int, head: bytes, pieces: list[bytes], gap: float) -> tuple[bytes, float]:
    """Sends ``head``, then each piece ``gap`` seconds apart while the server has not answered;
    returns what it answered (until it closed, or 5 s of silence) and the seconds that took."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head)
        for piece in pieces:
            if select.select([sock], [], [], gap)[0]:
                break  # the server answered: read it below
            try:
                sock.sendall(piece)
            except OSError:
                break
        sock.settimeout(5)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and b"connection: close" not in answer.lower():
                    break  # answered on a connection kept alive
        except (socket.timeout, ConnectionResetError):
            pass
        return answer, time.monotonic() - started


def test_a_page_body_trickled_on_the_asgi_path_is_answered_408_and_a_slow_steady_upload_is_not(gateway, tmp_path):
    """A client that sends a page's POST body a byte at a time holds its connection (and a request
    waiting in Django's ASGI handler) no longer than the body deadline; a body that keeps coming
    at a modest rate moves the deadline later and gets through."""
    from django.db import connection

    from tests.gateway.conftest import start_server, stop_server

    server = start_server(dict(connection.settings_dict), tmp_path / "slow-body.log",
                          extra_env={"MLPORTAL_GATEWAY_BODY_TIMEOUT": "1.5"})
    try:
        head = b"POST /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        answer, took = _trickle(server.port, head + b"Content-Length: 1000\r\n\r\nusername=a", [b"a"] * 60, 0.2)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
        assert b"body did not arrive within 1.5 s" in answer and b"connection: close" in answer
        assert took < 5
        # 40 KiB in 4 KiB pieces a quarter of a second apart: 2.5 s, longer than the deadline,
        # but every piece moves it later.
        body = b"username=" + b"a" * (40 * 1024 - 9)
        pieces = [body[i:i + 4096] for i in range(0, len(body), 4096)]
        answer, took = _trickle(server.port, head + b"Content-Length: %d\r\n\r\n" % len(body), pieces, 0.25)
        assert took > 2.0
        assert answer.startswith(b"HTTP/1.1 ") and not answer.startswith(b"HTTP/1.1 408 "), answer[:300]
        assert server.request("GET", "/login/")[0] == 200
        assert "Traceback" not in server.log()
    finally:
        stop_server(server)


def test_a_caller_gone_mid_body_on_the_asgi_path_is_never_forwarded(gateway, workspace, owner):
    """A scoring URL in another form (a %-escape) takes uvicorn's ASGI cycle; a caller that closes
    before its body is whole sends nothing to a replica (a truncated body could score a truncated
    input), and the same URL whole is answered."""
    replica = FakeReplica("ok")
    try:
        _service(workspace, owner, "fake-partial", replica)
        assert _wait_for_status(gateway, "fake-partial", 200)[0] == 200
        replica.seen.clear()
        escaped = "fake%2Dpartial"
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            sock.sendall(_score_head(escaped, 100) + b'{"data": [{"a": 1}')
            time.sleep(0.3)
        time.sleep(1.0)
        assert replica.seen == []
        whole = b'{"data": [{"a": 1}]}'
        answer = _exchange(gateway.port, _score_head(escaped, len(whole)).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1)
                           + whole)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        assert replica.seen == [whole]
    finally:
        replica.shutdown()
        replica.server_close()


def test_a_failing_shadow_is_logged_at_most_every_few_seconds_and_callers_are_unaffected(
        gateway, workspace, owner):
    from deployments.models import ServiceReplica, ServiceRevision

    live, shadow = FakeReplica("ok"), FakeReplica("garbage")
    try:
        service = _service(workspace, owner, "fake-shadowed", live)
        revision = ServiceRevision.objects.create(service=service, number=2, image=service.image,
                                                  image_ref=service.image.ref, reason="shadow", role="shadow")
        ServiceReplica.objects.create(service=service, number=2, container_id="fake-shadow", host="127.0.0.1",
                                      port=shadow.port, revision=revision)
        service.rollout = {"mode": "shadow", "status": "running", "revision": 2, "weight": 100}
        service.save(update_fields=["rollout"])
        assert _wait_for_status(gateway, "fake-shadowed", 200)[0] == 200
        deadline = time.monotonic() + 10
        while not shadow.seen and time.monotonic() < deadline:  # the table has the shadow once it mirrors
            assert gateway.score("fake-shadowed", {"a": 1}, KEY)[0] == 200
            time.sleep(0.1)
        assert shadow.seen, "the shadow revision never got a copy"
        for _ in range(5):
            assert gateway.score("fake-shadowed", {"a": 1}, KEY)[0] == 200
        time.sleep(0.5)
        warnings = re.findall(r"the shadow revision 2 of service 'fake-shadowed' answered 502: .*", gateway.log_path.read_text(errors="replace"))
        assert len(warnings) == 1, gateway.log()[-2000:]
        assert "not HTTP/1.1" in warnings[0] and "callers are unaffected" in warnings[0]
    finally:
        for replica in (live, shadow):
            replica.shutdown()
            replica.server_close()


def test_a_replica_that_closes_mid_answer_or_answers_garbage_is_a_502_and_the_others_keep_working(
        gateway, workspace, owner):
    replicas = {mode: FakeReplica(mode) for mode in ("ok", "close_mid_answer", "garbage")}
    try:
        for mode, replica in replicas.items():
            _service(workspace, owner, f"fake-{mode.replace('_', '-')}", replica)
        status, headers, body = _wait_for_status(gateway, "fake-ok", 200)
        assert (status, body) == (200, "0") and headers["x-mlportal-replica"] == "1"
        for mode, problem in (("close_mid_answer", "closed the connection before answering in full"),
                              ("garbage", "not HTTP/1.1")):
            name = f"fake-{mode.replace('_', '-')}"
            status, headers, body = _wait_for_status(gateway, name, 502)
            assert status == 502 and body["error"]["code"] == "bad_gateway", body
            assert problem in body["error"]["message"] and "not retried elsewhere" in body["error"]["message"]
            assert headers["x-mlportal-service"] == name
        # Many at once on keep-alive connections, while the broken ones fail: the good one answers each.
        results = []

        def load(name: str) -> None:
            for _ in range(10):
                results.append((name, gateway.score(name, {"a": 1}, KEY)[0]))

        threads = [threading.Thread(target=load, args=(name,)) for name in ("fake-ok", "fake-ok", "fake-garbage")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {status for name, status in results if name == "fake-ok"} == {200}
        assert {status for name, status in results if name == "fake-garbage"} <= {502, 503}
        assert gateway.request("GET", "/login/")[0] == 200
    finally:
        for replica in replicas.values():
            replica.shutdown()
            replica.server_close()
