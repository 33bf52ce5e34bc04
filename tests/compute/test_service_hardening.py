"""A service container under hostile traffic (issue 13): every attack that once killed a worker,
smuggled a request past the framing, grew a worker without bound or forged a log line, tried
against a real one-worker container on its published 127.0.0.1 port, unauthenticated where it
was. After each, the same worker still answers (no restart counted)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from compute.containers import container_logs, start_service_container, stop_container, wait_ready
from compute.images import build_service_image, remove_image
from tests.helpers import raw_exchange

pytestmark = pytest.mark.docker

KEY = "hardening-test-key"
SCORE = b'''
import json, time

def init():
    pass

def run(input_str):
    data = json.loads(input_str)
    if data.get("sleep"):
        time.sleep(data["sleep"])
    if data.get("deep"):
        value = []
        for _ in range(100_000):
            value = [value]
        return value
    if "echo" in data:
        print("echo:", data["echo"], flush=True)
    return {"ok": True, "n": len(data.get("values", []))}
'''
TAG = f"mlportal-test-hardening:{os.getpid()}"


@pytest.fixture(scope="module")
def hardening_image(small_env):
    build_service_image(tag=TAG, env_image=small_env["tag"], app_files={"score.py": SCORE},
                        labels={"mlportal.test": "yes"}, log=lambda line: None)
    yield TAG
    remove_image(TAG)


def _start(image: str, suffix: str, **env: str) -> dict:
    started = start_service_container(image=image, service_id=f"svc-hardening-{suffix}", replica=0,
                                      name=f"mlportal-test-hardening-{suffix}-{os.getpid()}",
                                      env={"MLPORTAL_SERVICE_KEYS": KEY, "MLPORTAL_WORKERS": "1", **env},
                                      memory_mb=512)
    try:
        wait_ready(host=started["host"], port=started["port"], container_id=started["id"], timeout_s=60)
    except BaseException:
        stop_container(started["id"])
        raise
    return started


@pytest.fixture(scope="module")
def service(hardening_image):
    started = _start(hardening_image, "main", MLPORTAL_HEAD_TIMEOUT="2")
    yield started
    stop_container(started["id"])


def exchange(port: int, payload: bytes, timeout: float = 10) -> tuple[bytes, bool]:
    """Sends ``payload`` on a fresh connection; returns (what came back, whether the server closed);
    a refused request must also end the connection, so after a whole answer it waits 1 s for that."""
    return raw_exchange(port, payload, timeout=timeout, close_wait=1.0)


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1])


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def score(port: int, payload: dict, timeout: float = 10) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def assert_worker_goes_on(started: dict) -> None:
    """The one worker answers a real scoring request, and the master never had to start it again."""
    assert score(started["port"], {"values": [1, 2, 3]}) == (200, {"ok": True, "n": 3})
    assert metric(started["port"], "mlportal_worker_restarts_total") == 0
    assert metric(started["port"], "mlportal_workers_ready") == 1


def worker_rss_kib(started: dict) -> int:
    """The largest resident set of the container's processes (the master or the worker), in KiB."""
    probe = ("import os\nbest = 0\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
             "    try:\n        lines = open(f'/proc/{pid}/status').read().splitlines()\n"
             "    except OSError:\n        continue\n"
             "    best = max([best] + [int(l.split()[1]) for l in lines if l.startswith('VmRSS:')])\nprint(best)\n")
    done = subprocess.run(["docker", "exec", started["id"], "python3", "-c", probe],
                          capture_output=True, text=True, timeout=30, check=True)
    return int(done.stdout.strip())


HEAD = b"POST /score HTTP/1.1\r\nHost: svc\r\nContent-Type: application/json\r\n"


def test_a_content_length_that_only_isdigit_accepts_is_400_and_the_worker_lives(service):
    for _ in range(10):  # '²' as one latin-1 byte (what str.isdigit() saw) and as UTF-8
        for superscript_two in (b"\xb2", "²".encode()):
            data, closed = exchange(service["port"], HEAD + b"Content-Length: " + superscript_two + b"\r\n\r\n")
            assert status_of(data) == 400 and b"Content-Length" in data and closed
    assert_worker_goes_on(service)


def test_a_100000_deep_json_body_is_400_naming_the_limit(service):
    body = b"[" * 100_000 + b"]" * 100_000
    status, answer = score_raw(service["port"], body)
    assert status == 400 and "deeper than 64 levels" in answer["error"]["message"]
    status, answer = score_raw(service["port"], b'{"values": ' + b"[" * 65 + b"]" * 65 + b"}")
    assert status == 400 and "deeper than 64" in answer["error"]["message"]
    assert_worker_goes_on(service)


def score_raw(port: int, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=body,
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_run_returning_a_100000_deep_list_is_500_and_the_worker_lives(service):
    assert score(service["port"], {"deep": True})[0] == 500
    assert_worker_goes_on(service)


@pytest.mark.parametrize("framing", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    b"Transfer-Encoding: xchunkedx\r\n\r\n0\r\n\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n+1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n 2 \r\n{}\r\n0\r\n\r\n",
], ids=["cl-then-te", "te-then-cl", "xchunkedx", "gzip-chunked", "size-+1_0", "size-0x2", "size-space-2-space"])
def test_ambiguous_framing_is_refused_and_the_connection_closed(service, framing):
    # A second request rides behind each: it must never be answered on this connection.
    smuggled = b"GET /health HTTP/1.1\r\nHost: svc\r\n\r\n"
    data, closed = exchange(service["port"], HEAD + framing + smuggled)
    assert status_of(data) in (400, 501) and closed
    assert data.count(b"HTTP/1.1 ") == 1, data
    assert_worker_goes_on(service)


def test_a_bare_lf_cannot_hide_a_header_inside_host(service):
    payload = (b"POST /score HTTP/1.1\r\nHost: svc\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
               b"{}0\r\n\r\n")
    data, closed = exchange(service["port"], payload)
    assert status_of(data) == 400 and closed and data.count(b"HTTP/1.1 ") == 1
    data, closed = exchange(service["port"], b"GET /health HTTP/1.1\nHost: svc\n\n")
    assert status_of(data) == 400 and closed
    assert_worker_goes_on(service)


def test_a_valid_chunked_body_with_an_extension_and_a_trailer_still_scores(service):
    body = b'{"values": [1, 2]}'
    payload = (HEAD + b"Authorization: Bearer " + KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x;name=value\r\n" % len(body) + body + b"\r\n0\r\nX-Checksum: 1\r\n\r\n")
    data, _ = exchange(service["port"], payload + b"GET /health HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
    assert status_of(data) == 200 and b'"n": 2' in data and data.count(b"HTTP/1.1 200") == 2


def _flood(port: int, prefix: bytes, line: bytes, total: int, results: list) -> None:
    """Sends ``prefix`` then ``line`` repeated up to ``total`` bytes, stopping when the server cuts
    the connection; records (bytes sent, first response bytes, seconds to the response)."""
    started = time.monotonic()
    sent = 0
    answer = b""
    answered_at = None
    block = line * (65536 // len(line))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.setblocking(False)
        pending = prefix
        while sent < total and time.monotonic() - started < 60:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
                answered_at = answered_at or time.monotonic() - started
                if b"\r\n\r\n" in answer:
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                sent += sock.send(pending or block)
                pending = b""
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break
    results.append((sent, answer, answered_at))


def test_an_endless_chunked_trailer_is_cut_off_in_bounded_time_and_memory(service):
    before = worker_rss_kib(service)
    prefix = HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
    results: list = []
    started = time.monotonic()
    threads = [threading.Thread(target=_flood, args=(service["port"], prefix, b"a:b\r\n", 48 * 1024 * 1024, results)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    elapsed = time.monotonic() - started
    assert len(results) == 6
    for sent, answer, answered_at in results:
        assert answer.startswith(b"HTTP/1.1 400") and (b"trailer" in answer or b"framing" in answer), answer[:300]
        assert answered_at is not None and answered_at < 10, answered_at
    assert elapsed < 30, f"six trailer floods took {elapsed:.1f} s"
    assert worker_rss_kib(service) < before + 32 * 1024
    assert_worker_goes_on(service)


def test_chunk_extensions_are_bounded_too(service):
    prefix = HEAD + b"Transfer-Encoding: chunked\r\n\r\n2;"
    results: list = []
    _flood(service["port"], prefix, b"x" * 64, 48 * 1024 * 1024, results)
    [(sent, answer, answered_at)] = results
    assert answer.startswith(b"HTTP/1.1 400") and b"framing" in answer, answer[:300]
    assert answered_at is not None and answered_at < 10
    assert_worker_goes_on(service)


def test_a_head_sent_byte_by_byte_gets_408_at_the_deadline_while_others_are_served(service):
    before = worker_rss_kib(service)
    started = time.monotonic()
    answer = b""
    slow = [socket.create_connection(("127.0.0.1", service["port"]), timeout=1) for _ in range(20)]
    try:
        for sock in slow:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: svc\r\n")
        closed_at = None
        while time.monotonic() - started < 15 and closed_at is None:
            for sock in slow:
                try:
                    sock.sendall(b"X")
                except OSError:
                    pass
            assert score(service["port"], {"values": [1]})[0] == 200  # the worker serves others meanwhile
            try:
                chunk = slow[0].recv(65536)
            except socket.timeout:
                continue
            answer += chunk
            if not chunk or b"\r\n\r\n" in answer:
                closed_at = time.monotonic() - started
    finally:
        for sock in slow:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"within 2 s" in answer, answer
    assert closed_at is not None and 2 <= closed_at < 6
    assert worker_rss_kib(service) < before + 16 * 1024
    assert_worker_goes_on(service)


def test_control_bytes_in_the_target_are_refused_and_never_reach_the_log_raw(service):
    for target in (b"/score\x1b]0;owned\x07", b"/score\nw0 10.0.0.1 \"GET /forged\" 200", b"/\x1b[2J"):
        data, closed = exchange(service["port"], b"GET " + target + b" HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert status_of(data) == 400 and closed
    # What run() prints reaches the container log as it is; the portal's reader escapes it.
    assert score(service["port"], {"echo": "\x1b]0;owned\x07\nw0 forged line\x1b[2J"})[0] == 200
    time.sleep(0.5)
    raw = subprocess.run(["docker", "logs", service["id"]], capture_output=True, timeout=30).stdout
    assert b"\x1b" in raw  # the attack did reach the engine's log...
    text = container_logs(service["id"])
    assert "\x1b" not in text and "\x07" not in text  # ...and never what the portal shows
    assert "echo: \\x1b]0;owned\\x07" in text
    assert "\nw0 forged line" in text  # a line run() printed stays a line of its own, as printed
    access = [line for line in text.splitlines() if line.startswith("w0 ")]
    assert access and not any("/forged" in line for line in access)
    assert_worker_goes_on(service)


def test_a_scoring_request_has_a_time_limit_by_default_and_a_service_may_set_its_own(service, hardening_image):
    assert "timeout 60 s" in container_logs(service["id"])  # nobody set MLPORTAL_REQUEST_TIMEOUT
    started = _start(hardening_image, "timeout", MLPORTAL_REQUEST_TIMEOUT="1")
    try:
        status, answer = score(started["port"], {"sleep": 3})
        assert status == 504 and "1 s request timeout" in answer["error"]["message"]
        assert_worker_goes_on(started)
    finally:
        stop_container(started["id"])
