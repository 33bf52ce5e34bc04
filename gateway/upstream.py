"""Keep-alive HTTP/1.1 connections from the gateway to the replicas: one ``asyncio.Protocol`` per
connection, llhttp (httptools, as in the scoring server and uvicorn) reading the answers, each
request written in one ``transport.write``.

It replaced aiohttp's client, whose request and response objects, header multidicts and stream
readers cost about 0.7 ms a request — most of the time the gateway added to a fast model's answer.
What the gateway needs is narrower: a request whose head it builds itself, the whole answer (a
status, two headers, the body), and three outcomes it must tell apart, because a request that
reached a replica may have reached ``run()`` and is never sent to another:

- ``ConnectFailed``: no connection could be made (refused, unreachable, timed out); nothing was sent.
- ``ReplicaFailed``: the request was sent and the replica closed the connection before answering in
  full, answered what is not HTTP, or answered more than ``MAX_ANSWER_BYTES``.
- ``ReplicaTimeout``: the request was sent and no full answer came within the timeout.

Idle connections are kept per replica address (at most ``MAX_IDLE`` each, most recently used first)
for ``KEEPALIVE_SECONDS``, under the scoring server's 30 s idle timeout, so a pooled connection is
not one the replica is closing; one that the replica closed (it restarted, it was killed) leaves
the pool when the loop sees the close. A connection is reused only after a complete answer that
allows keep-alive; after any failure or timeout it is closed, since its state is unknown.
"""
from __future__ import annotations

import asyncio
import socket
import time

import httptools

KEEPALIVE_SECONDS = 15.0
MAX_IDLE = 64  # idle connections kept per replica; more are closed once answered
MAX_ANSWER_BYTES = 256 * 1024 * 1024  # a replica streaming without end is cut off here
MAX_ANSWER_HEAD_BYTES = 64 * 1024


class UpstreamError(Exception):
    """A request to a replica did not get a full answer."""


class ConnectFailed(UpstreamError):
    """No connection to the replica: the request was not sent (another replica may take it)."""


class ReplicaFailed(UpstreamError):
    """The request was sent, and the connection broke or the answer could not be read."""


class ReplicaTimeout(UpstreamError):
    """The request was sent and no full answer came in time."""


class Answer:
    """A replica's answer: status, the two headers the gateway passes on (None when absent), body."""

    __slots__ = ("status", "content_type", "request_id", "body")

    def __init__(self, status: int, content_type: bytes | None, request_id: bytes | None, body: bytes) -> None:
        self.status, self.content_type, self.request_id, self.body = status, content_type, request_id, body


class _Connection(asyncio.Protocol):
    """One connection to a replica; one request at a time."""

    __slots__ = ("pool", "key", "transport", "parser", "waiter", "timer", "closed", "idle_since", "head_only",
                 "status", "content_type", "request_id", "chunks", "size", "head_size", "complete", "framed", "host_line")

    def __init__(self, pool: Upstream, key: tuple[str, int]) -> None:
        self.pool, self.key = pool, key
        host, port = key
        self.host_line = (f"Host: [{host}]:{port}\r\n" if ":" in host else f"Host: {host}:{port}\r\n").encode("latin-1")
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.idle_since = 0.0
        self.head_only = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.content_type = self.request_id = None
        self.chunks: list[bytes] = []
        self.size = self.head_size = 0
        self.complete = False
        self.framed = False  # a Content-Length or Transfer-Encoding: else the body runs to the close

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not TCP (tests over a Unix socket) or already set

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for (after a full answer): the replica is not speaking HTTP as
            # expected, so this connection is not reused.
            self.close()
            return
        if not self.status:
            self.head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._fail(exc.__context__ if isinstance(exc.__context__, UpstreamError) else ReplicaFailed(
                f"its answer could not be read ({exc.__context__ or exc})"))
            return
        except httptools.HttpParserError as exc:
            self._fail(ReplicaFailed(f"it answered what is not HTTP/1.1 ({exc or type(exc).__name__})"))
            return
        if not self.status and self.head_size > MAX_ANSWER_HEAD_BYTES:
            self._fail(ReplicaFailed(f"its answer's head is larger than {MAX_ANSWER_HEAD_BYTES // 1024} KiB"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost tells a waiter

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._discard(self)
        if self.waiter is not None and not self.waiter.done():
            if self.status and exc is None and (self.head_only or not self.framed):
                self._done()  # an answer whose body ends with the connection (HTTP/1.0 style)
                return
            detail = f": {exc}" if exc else ""
            self._fail(ReplicaFailed(f"it closed the connection before answering in full{detail}"))

    # --- llhttp callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self.content_type = value
        elif name == b"x-request-id":
            self.request_id = value
        elif name in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.head_only:  # an answer to HEAD has no body whatever its Content-Length says
            self._done(reuse=False)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_ANSWER_BYTES:
            raise ReplicaFailed(f"its answer is larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB")
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:  # an interim answer (100 Continue): the real one follows
            self._reset()
            return
        self._done(reuse=self.parser.should_keep_alive())

    # --- request ------------------------------------------------------------------------------

    def send(self, data: bytes, head_only: bool, timeout: float) -> asyncio.Future:
        loop = self.pool.loop
        self.waiter = loop.create_future()
        self.head_only = head_only
        self._reset()
        self.timer = loop.call_later(timeout, self._timed_out, timeout)
        self.transport.write(data)
        return self.waiter

    def _done(self, reuse: bool = False) -> None:
        if self.complete:
            return
        self.complete = True
        waiter, self.waiter = self.waiter, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self.status, self.content_type, self.request_id, body))
        if reuse and not self.closed:
            self.pool._release(self)
        else:
            self.close()

    def _fail(self, error: UpstreamError) -> None:
        waiter, self.waiter = self.waiter, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def _timed_out(self, timeout: float) -> None:
        self.timer = None
        self._fail(ReplicaTimeout(f"no answer within {timeout:g} s"))

    def close(self) -> None:
        self.closed = True
        self.pool._discard(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Upstream:
    """The gateway's connections to every replica."""

    def __init__(self, *, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.idle: dict[tuple[str, int], list[_Connection]] = {}
        self.busy: set[_Connection] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def request(self, host: str, port: int, method: bytes, target: bytes, headers: bytes, body: bytes | None,
                      *, timeout: float) -> Answer:
        """Sends one request and returns the full answer. ``headers`` are complete header lines
        (``b"Name: value\\r\\n"`` each) other than Host and Content-Length, which this adds
        (Content-Length when ``body`` is not None). Raises ConnectFailed, ReplicaFailed or
        ReplicaTimeout (see the module's docstring)."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        connection = self._take((host, port))
        if connection is None:
            connection = await self._connect(host, port)
        if body is None:
            data = b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method, target, connection.host_line, headers)
        else:
            data = b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n%s\r\n%s" % (
                method, target, connection.host_line, len(body), headers, body)
        self.busy.add(connection)
        waiter = connection.send(data, method == b"HEAD", timeout)
        try:
            return await waiter
        except asyncio.CancelledError:
            connection.close()  # the answer may still come: this connection is not reusable
            raise

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self.idle.get(key)
        if not idle:
            return None
        oldest = time.monotonic() - KEEPALIVE_SECONDS
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.idle_since > oldest:
                return connection
            connection.close()
        return None

    async def _connect(self, host: str, port: int) -> _Connection:
        key = (host, port)
        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Connection(self, key), host, port), self.connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectFailed(f"no connection within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectFailed(exc.strerror or str(exc)) from None
        return connection

    def _release(self, connection: _Connection) -> None:
        self.busy.discard(connection)
        idle = self.idle.setdefault(connection.key, [])
        if len(idle) >= MAX_IDLE:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def _discard(self, connection: _Connection) -> None:
        self.busy.discard(connection)
        idle = self.idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)
            if not idle:
                del self.idle[connection.key]

    def close(self) -> None:
        """Closes every connection (the gateway is stopping)."""
        for idle in list(self.idle.values()):
            for connection in list(idle):
                connection.close()
        for connection in list(self.busy):
            connection.close()
        self.idle.clear()
