"""The gateway's keep-alive client to the replicas (gateway.upstream), against real sockets on this
host: a well-behaved server reuses one connection; a refused connection, a replica that closes
mid-answer, one that answers garbage, one that never answers and one that streams without end each
end in the error the gateway maps to skip / 502 / 504, and leave no connection in the pool."""
from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway import upstream
from gateway.upstream import ConnectFailed, ReplicaFailed, ReplicaTimeout, Upstream

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: r-1\r\nContent-Length: 2\r\n\r\n[]"


async def _serve(answer):
    """A server on a free port whose ``answer(request_bytes, writer)`` coroutine answers each
    request head it reads (the body, if any, comes with the head here); returns (server, port, seen)
    where seen counts connections."""
    seen = {"connections": 0, "requests": []}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                seen["requests"].append(head + body)
                if await answer(head + body, writer) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def _run(coro):
    # A thread of its own: another test of the session may have left an event loop running here.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(coro, 20)).result()


def test_it_reuses_one_connection_and_passes_status_headers_and_body():
    async def main():
        async def answer(request, writer):
            writer.write(OK)

        server, port, seen = await _serve(answer)
        client = Upstream(connect_timeout=1)
        for _ in range(3):
            got = await client.request("127.0.0.1", port, b"POST", b"/score", b"Content-Type: application/json\r\n",
                                       b'{"a": 1}', timeout=5)
            assert (got.status, got.content_type, got.request_id, got.body) == (200, b"application/json", b"r-1", b"[]")
        head = await client.request("127.0.0.1", port, b"HEAD", b"/score", b"", None, timeout=5)
        assert head.status == 200 and head.body == b""
        client.close()
        server.close()
        return seen

    seen = _run(main())
    assert seen["connections"] <= 2  # the three POSTs on one; HEAD's connection is not reused
    first = seen["requests"][0]
    assert first.startswith(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1:") and b"Content-Length: 8\r\n" in first
    assert first.endswith(b'\r\n\r\n{"a": 1}')


def test_a_chunked_answer_and_one_that_ends_with_the_connection_are_read_whole():
    async def main():
        async def chunked(request, writer):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")

        async def until_close(request, writer):
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
            await writer.drain()
            return False

        results = []
        for answer in (chunked, until_close):
            server, port, _ = await _serve(answer)
            client = Upstream(connect_timeout=1)
            results.append((await client.request("127.0.0.1", port, b"GET", b"/", b"", None, timeout=5)).body)
            client.close()
            server.close()
        return results

    assert _run(main()) == [b"abcde", b"all of it"]


def test_a_refused_connection_is_connect_failed():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main():
        client = Upstream(connect_timeout=1)
        with pytest.raises(ConnectFailed):
            await client.request("127.0.0.1", port, b"GET", b"/ready", b"", None, timeout=1)

    _run(main())


@pytest.mark.parametrize("reply, problem", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", "closed the connection before answering in full"),
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not HTTP/1.1"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "not HTTP/1.1"),
    (b"", "closed the connection before answering in full"),
])
def test_a_replica_that_closes_mid_answer_or_answers_garbage_is_replica_failed(reply, problem):
    async def main():
        async def answer(request, writer):
            writer.write(reply)
            await writer.drain()
            return False  # and close

        server, port, _ = await _serve(answer)
        client = Upstream(connect_timeout=1)
        with pytest.raises(ReplicaFailed, match=problem):
            await client.request("127.0.0.1", port, b"POST", b"/score", b"", b"{}", timeout=5)
        assert not client.idle and not client.busy
        server.close()

    _run(main())


def test_a_replica_that_never_answers_times_out_and_one_that_streams_without_end_is_cut_off(monkeypatch):
    monkeypatch.setattr(upstream, "MAX_ANSWER_BYTES", 64 * 1024)

    async def main():
        async def silent(request, writer):
            await asyncio.sleep(30)

        async def endless(request, writer):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(1000):
                writer.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
                await writer.drain()

        server, port, _ = await _serve(silent)
        client = Upstream(connect_timeout=1)
        with pytest.raises(ReplicaTimeout):
            await client.request("127.0.0.1", port, b"POST", b"/score", b"", b"{}", timeout=0.3)
        assert not client.idle and not client.busy
        server.close()

        server, port, _ = await _serve(endless)
        with pytest.raises(ReplicaFailed, match="larger than"):
            await client.request("127.0.0.1", port, b"GET", b"/", b"", None, timeout=5)
        assert not client.idle
        server.close()

    _run(main())


def test_a_pooled_connection_the_replica_closed_is_not_reused():
    async def main():
        async def once(request, writer):
            writer.write(OK)
            await writer.drain()
            return False  # keep-alive announced, then closed anyway (a restarted replica)

        server, port, seen = await _serve(once)
        client = Upstream(connect_timeout=1)
        for _ in range(2):
            assert (await client.request("127.0.0.1", port, b"GET", b"/", b"", None, timeout=5)).status == 200
            await asyncio.sleep(0.1)  # the loop sees the close
        server.close()
        return seen

    assert _run(main())["connections"] == 2
