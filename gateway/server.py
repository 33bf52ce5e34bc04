"""The portal's HTTP protocol for uvicorn: uvicorn's own httptools protocol, with the scoring paths
answered below the ASGI cycle.

    uvicorn mlportal.asgi:application --http gateway.server:GatewayHttpProtocol …

For every request llhttp has framed, ``on_headers_complete`` looks at the raw target: a plain
``/api/v1/services/<ref>/score``, ``…/swagger.json`` or ``…/v2/…`` (no percent-escapes, no
``Expect: 100-continue``, no upgrade) becomes a ``ScoringCycle``, which reads the body, asks
``Gateway.score`` for the reply and writes its head and body in one ``transport.write``; anything
else (pages, the API, ``/metrics``, static files, and scoring URLs in any other form, which
``Gateway.__call__`` still answers) goes to uvicorn's ASGI cycle as before. uvicorn's ASGI cycle —
the scope, the receive and send messages, an ``asyncio.Event`` per request, the per-header checks of
``send`` — cost about 0.6 ms of a scoring request; a ``ScoringCycle`` is started, queued behind a
pipelined request and told of a lost connection by the same code as uvicorn's cycle (it has the
attributes that code uses), so keep-alive, pipelining, the keep-alive timeout, graceful shutdown
and ``--limit-concurrency``'s task count work the same.

For every request, on every path, it also bounds what uvicorn's protocol did not: the request head
(``MAX_HEAD_BYTES``, ``MAX_HEADERS`` fields; past them 431 and the connection closed, before the
head is held whole), the time a head may take from its first byte, or from the connect on a new
connection (``Gateway.head_timeout``; past it 408 and closed) and the time a new connection may stay silent (the same bound; then closed, as
uvicorn's keep-alive timeout closes an idle one), so a client that trickles a head or never sends
one holds no connection for long; and on the scoring paths the time a body may take to arrive once its head
has (``Gateway.body_timeout``; past it 408), and on every other path (pages, the REST API: uvicorn's
ASGI cycle) the same bound from the end of the head to the end of the body, moved later by each
byte that arrives (``BODY_MIN_RATE``, so a large upload on a slow link still gets through; past it
408 and closed; Django reads a body whole before a view runs, so a view never sees part of one). A malformed request is answered 400 and closed, as
uvicorn does; an error in the gateway is logged and answered 500, never raised into the loop.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HEADER_VALUE_RE, STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_client_addr

from gateway.app import ClientGone

logger = logging.getLogger("mlportal.gateway")

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128
HEAD_TIMEOUT = 10.0  # when the app carries no gateway (Gateway.head_timeout otherwise)
BODY_TIMEOUT = 30.0  # when the app carries no gateway (Gateway.body_timeout otherwise)
# On the ASGI path every body byte that arrives moves the body's deadline this much later (as
# Apache's mod_reqtimeout MinRate does): a large upload over a slow link still gets through, a
# byte a minute does not.
BODY_MIN_RATE = 1024  # bytes per second
# After answering a body too large before it was read whole, the rest is read and dropped for up
# to this long before the connection closes, so the caller gets to read the 413 (closing with
# unread data would reset the connection under it).
LINGER_SECONDS = 5.0
DRAIN_BYTES = 1024 * 1024  # after a refused head, at most this much more is read and dropped
# The raw request target of a scoring path; anything with an escape, a fragment or an absolute
# form takes the ASGI path, which decodes it as before.
SCORING_TARGET = re.compile(
    rb"^/api/v1/services/(?P<ref>[^/?#%\x00-\x20\x7f-\xff]+)/(?P<rest>score/?|swagger\.json|v2(?:/[^?#%\x00-\x20\x7f-\xff]*)?)"
    rb"(?:\?(?P<query>[^#\x00-\x20\x7f-\xff]*))?$")


class HeadTooLarge(Exception):
    pass


class _Wake:
    """What uvicorn's protocol calls ``message_event``: set by the parser's callbacks (more body,
    the end of the body, a lost connection); ``wait`` is one future, made only when the cycle
    must wait (a small body has arrived with its head)."""

    __slots__ = ("waiter",)

    def __init__(self) -> None:
        self.waiter: asyncio.Future | None = None

    def set(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class BodyTimeout(Exception):
    """The body did not arrive in time."""


class ScoringCycle:
    """One scoring request on a connection, from its head to its answer."""

    __slots__ = ("protocol", "transport", "flow", "scope", "method", "target", "ref", "rest", "query", "headers",
                 "body", "more_body", "message_event", "response_complete", "disconnected", "keep_alive",
                 "on_response")

    def __init__(self, protocol: GatewayHttpProtocol, method: str, target: bytes, match: re.Match,
                 keep_alive: bool) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.flow = protocol.flow
        self.scope = protocol.scope
        self.method = method
        self.target = target
        self.ref = match["ref"].decode("ascii")
        self.rest = match["rest"].decode("ascii")
        self.query = match["query"] or b""
        self.headers = protocol.headers
        self.body = bytearray()
        self.more_body = True
        self.message_event = _Wake()
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.on_response = protocol.on_response_complete

    async def run_asgi(self, app: Any) -> None:
        """Answers the request (the name is the one uvicorn's protocol starts a cycle by; ``app``
        is not used: the gateway answers)."""
        try:
            gateway = self.protocol.gateway
            headers = dict(self.headers)
            try:
                reply = await gateway.score(self.method, self.ref, self.rest, self.query, headers,
                                            lambda: self._read_body(headers, gateway))
            except ClientGone:
                return
            except BodyTimeout:
                self.keep_alive = False
                self._write(408, b"application/json", _error_body(
                    f"The request body did not arrive within {gateway.body_timeout:g} s of its head: send it whole, "
                    "at once.", "request_timeout"), [])
                return
            if self.more_body:  # answered before the body was read whole (413): the rest is dropped
                self.keep_alive = False
                self.protocol.linger()
            self._write(reply.status, reply.content_type, reply.body, reply.headers)
        except Exception:
            logger.exception("the scoring request %s %s failed", self.method, self.target[:200].decode("latin-1"))
            if not self.response_complete and not self.disconnected:
                self.keep_alive = False
                self._write(500, b"application/json", _error_body(
                    "The gateway failed while answering this request (it is in the portal's log); try again.",
                    "internal_error"), [])
        finally:
            self.on_response = _nothing

    async def _read_body(self, headers: dict, gateway: Any) -> bytes | None:
        limit = gateway.max_body
        declared = headers.get(b"content-length")
        if declared is not None and int(declared) > limit:  # llhttp let only digits through
            return None
        deadline = None
        while self.more_body and not self.disconnected:
            if len(self.body) > limit:
                return None
            loop = asyncio.get_running_loop()
            now = loop.time()
            if deadline is None:
                deadline = now + gateway.body_timeout
            elif now >= deadline:
                raise BodyTimeout()
            self.flow.resume_reading()
            await self.message_event.wait(deadline - now)
        if self.disconnected:
            raise ClientGone()
        if len(self.body) > limit:
            return None
        return bytes(self.body)

    def _write(self, status: int, content_type: bytes, body: bytes, headers: list) -> None:
        if self.disconnected or self.response_complete:
            return
        lines = [STATUS_LINE[status]]
        for name, value in self.protocol.server_state.default_headers:
            lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"content-type: %s\r\ncontent-length: %d\r\n" % (content_type, len(body)))
        for name, value in headers:
            if HEADER_VALUE_RE.search(value):  # a replica's or a model's odd value is dropped, never sent raw
                logger.warning("dropped the header %s of a scoring answer: its value has control characters", name)
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        if self.method != "HEAD":
            lines.append(body)
        self.transport.write(b"".join(lines))
        self.response_complete = True
        protocol = self.protocol
        if protocol.access_log:
            protocol.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(self.scope), self.method,
                                        self.target.decode("latin-1"), self.scope["http_version"], status)
        if not self.keep_alive and not protocol.lingering:
            self.transport.close()
        self.on_response()


def _nothing() -> None:
    pass


def _error_body(message: str, code: str) -> bytes:
    from gateway.app import _error

    return _error(message, code)


def _find_gateway(app: Any) -> Any:
    """The Gateway inside uvicorn's loaded app (under its middleware: proxy headers, logging)."""
    from gateway.app import Gateway

    for _ in range(8):
        if isinstance(app, Gateway):
            return app
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the scoring paths answered by a ScoringCycle."""

    def __init__(self, config: Any, server_state: Any, app_state: dict, _loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(config, server_state, app_state, _loop)
        self.gateway = _find_gateway(self.app)
        self.in_head = True
        self.head_bytes = 0
        self.lingering = False
        self.draining: int | None = None  # bytes dropped since a refusal (None: not refused)
        self.head_timeout = getattr(self.gateway, "head_timeout", HEAD_TIMEOUT)
        self.head_timer: asyncio.TimerHandle | None = None  # runs from a head's first byte to its end
        self.body_timeout = getattr(self.gateway, "body_timeout", BODY_TIMEOUT)
        self.body_timer: asyncio.TimerHandle | None = None  # an ASGI request's: from its head's end to its body's
        self.body_deadline = 0.0  # loop time; each body byte moves it 1/BODY_MIN_RATE s later

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()  # a connection that never sends a head is closed in time too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def _cancel_body_timer(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _body_timed_out(self) -> None:
        self.body_timer = None
        if self.loop.time() < self.body_deadline:  # the body kept coming: its deadline moved
            self.body_timer = self.loop.call_at(self.body_deadline, self._body_timed_out)
            return
        cycle = self.cycle
        if self.transport.is_closing() or self.draining is not None or cycle is None or cycle.response_complete:
            return
        if cycle.response_started:  # answered without its body: nothing more can be said on this connection
            self.transport.close()
            return
        self._refuse(408, f"The request body did not arrive within {self.body_timeout:g} s of its head: "
                          f"send it whole, at once.")

    def _start_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or self.draining is not None or not self.in_head:
            return
        if self.head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # nothing asked: close quietly, as an idle keep-alive connection
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined head waits behind an answer still being made: not the client's delay
        self._refuse(408, f"The request head did not arrive within {self.head_timeout:g} s: send it whole, at once.")

    def linger(self) -> None:
        """Reads and drops the rest of the request being answered, then closes (LINGER_SECONDS at most)."""
        self.lingering = True
        self.loop.call_later(LINGER_SECONDS, self._close_lingering)

    def _close_lingering(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.draining is not None:
            self.draining += len(data)
            if self.draining > DRAIN_BYTES:
                self._close_lingering()
            return
        self._unset_keepalive_if_required()
        if self.in_head:
            self.head_bytes += len(data)
            self._start_head_timer()
        elif self.body_timer is not None:
            self.body_deadline += len(data) / BODY_MIN_RATE
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse(431, str(exc.__context__))
            else:
                logger.warning("could not read a request: %s", exc.__context__ or exc)
                self._refuse(400, "Invalid HTTP request received.")
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, f"Invalid HTTP request received: {exc}.")
            return
        if self.in_head and self.head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"The request head is larger than {MAX_HEAD_BYTES // 1024} KiB.")

    def _refuse(self, status: int, message: str) -> None:
        """Answers ``status`` with ``message`` (plain text), ends our side of the connection and
        drops what the caller still sends (up to DRAIN_BYTES, for LINGER_SECONDS), so it reads the
        answer instead of a reset; then closes."""
        if self.transport.is_closing() or self.draining is not None:
            return
        text = message.encode("ascii", "replace")
        self.transport.write(b"".join([
            STATUS_LINE[status], *(b"%s: %s\r\n" % pair for pair in self.server_state.default_headers),
            b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(text),
            text]))
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # a cycle still running has nobody to answer now
            self.cycle.message_event.set()
        self.draining = 0
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self._close_lingering)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(self.headers) > MAX_HEADERS:
            raise HeadTooLarge(f"The request has more than {MAX_HEADERS} header fields.")

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        self._cancel_head_timer()
        if self.gateway is not None and not self.expect_100_continue:
            match = SCORING_TARGET.match(self.url)
            if match is not None and not self.parser.should_upgrade():
                self._start_scoring(match)
                return
        super().on_headers_complete()
        # Cancelled by on_message_complete: for a request without a body, in this same feed.
        self.body_deadline = self.loop.time() + self.body_timeout
        self.body_timer = self.loop.call_at(self.body_deadline, self._body_timed_out)

    def _start_scoring(self, match: re.Match) -> None:
        parser = self.parser
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii")
        self.scope["method"] = method
        if version != "1.1":
            self.scope["http_version"] = version
        cycle = ScoringCycle(self, method, self.url, match, keep_alive=version != "1.0" and parser.should_keep_alive())
        existing = self.cycle
        self.cycle = cycle
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)
        else:  # pipelined behind a request still being answered: started by on_response_complete
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()
        self.in_head = True
        self.head_bytes = 0
        if self.lingering:
            self._close_lingering()

    def on_response_complete(self) -> None:
        if self.lingering:  # no keep-alive timer and no next request: it closes once the body is dropped
            self.server_state.total_requests += 1
            self.flow.resume_reading()
            return
        super().on_response_complete()
