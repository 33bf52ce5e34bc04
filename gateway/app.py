"""The scoring gateway: an ASGI application in front of Django's.

It answers the scoring paths of every service itself, on the event loop, over pooled keep-alive
connections to the replicas (``gateway.upstream``):

- ``POST /api/v1/services/<name or id>/score``
- ``/api/v1/services/<name or id>/v2/…`` (the Open Inference Protocol paths of the container)
- ``GET /api/v1/services/<name or id>/swagger.json``

and the portal's Prometheus ``/metrics`` and static files (``gateway.static``). Everything else goes
to Django's ASGI application. ``Gateway.score`` is the scoring path whichever server read the
request: the portal's uvicorn protocol (``gateway.server``) calls it below the ASGI cycle for a
plain scoring URL; ``Gateway.__call__`` calls it for one that came through the ASGI cycle (an
escaped URL, ``Expect: 100-continue``, or uvicorn started with its own protocol).

Keys are checked against the routing table (``gateway.table``), which a background task re-reads
from the database every ``MLPORTAL_GATEWAY_REFRESH_SECONDS``. A request that finds no route, no
ready replica, or a forced revision the table does not hold, re-reads it once (at most every
``MISS_REFRESH_SECONDS``, shared by concurrent callers), so a service answers as soon as it is
healthy and a canary as soon as its rollout runs; every other request is served from memory.
A request goes to the revision its weight picks (or the one the ``X-MLPortal-Revision`` header
forces), to the ready replica of it with the fewest outstanding requests; a replica that refuses
the connection is skipped, and a request that was sent to a replica is never sent to another.
Each service has a concurrency limit and a queue bound, held across every web process of the host
(``gateway.slots``); past both the answer is 503 with ``Retry-After``, so one flooded service holds
only its own slots.

Longer than 500 lines on purpose: the one request path (route, key, limit, balance, forward,
answer headers) reads top to bottom here; its parts with state of their own are modules already.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from gateway import metrics
from gateway.balancing import Balancer, Full, Limiter, choose_revision, mirrored
from gateway.slots import SlotFolder
from gateway.table import CHANGE_POLL_SECONDS, CHANGED_FILE, Revision, Route, Table, changed_stamp, load_table
from gateway.upstream import ConnectFailed, ReplicaFailed, ReplicaTimeout, Upstream

logger = logging.getLogger("mlportal.gateway")

SCORING_PATH = re.compile(r"^/api/v1/services/(?P<ref>[^/]+)/(?P<rest>score/?|swagger\.json|v2(?:/.*)?)$")
SCORE_TIMEOUT = 120.0  # seconds: run() may be slow; the container has its own request time limit
CONNECT_TIMEOUT = 2.0
PROBE_TIMEOUT = 1.0
FORCE_HEADER = b"x-mlportal-revision"
MISS_REFRESH_SECONDS = 0.2  # a flood of wrong keys reads the table at most five times a second
MAX_SHADOW_PER_SERVICE = 16  # mirrored requests in flight per service; past it a request is not mirrored
SHADOW_WARN_SECONDS = 10.0  # a failing shadow is logged at most this often per service


class ClientGone(Exception):
    """The caller closed the connection before its body arrived: nobody to answer, nothing to forward."""


def _json(data: Any) -> bytes:
    return json.dumps(data).encode()


def _error(message: str, code: str, fields: dict | None = None) -> bytes:
    return _json({"error": {"code": code, "message": message, "fields": fields or {}}})


class Answer:
    __slots__ = ("status", "body", "content_type", "replica", "revision", "request_id")

    def __init__(self, status: int, body: bytes, content_type: bytes, replica: int | None, revision: Revision | None,
                 request_id: bytes | None = None):
        self.status, self.body, self.content_type, self.replica, self.revision = status, body, content_type, replica, revision
        self.request_id = request_id  # the replica's X-Request-Id: what its captured row is keyed by


class Reply:
    """What a scoring request is answered: status, body, its content type and the other headers."""

    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status: int, body: bytes, content_type: bytes = b"application/json",
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, extra or []


UNAUTHORIZED = [(b"www-authenticate", b'Bearer realm="service"')]


class Labelled:
    """What the answers of one revision of a route carry and are counted under, made once per
    routing table: the revision headers and the metrics' children (``labels()`` takes a lock and
    builds its key on every call). Holds the route and the revision, so the ids it is found by
    stay theirs while it is kept."""

    __slots__ = ("route", "revision", "headers", "in_flight", "latency", "requests")

    def __init__(self, route: Route, revision: Revision | None) -> None:
        self.route, self.revision = route, revision
        self.headers = _route_headers(route, revision)
        number = str(revision.number) if revision is not None else ""
        self.in_flight = metrics.IN_FLIGHT.labels(route.workspace, route.name, number)
        self.latency = metrics.LATENCY.labels(route.workspace, route.name, number)
        self.requests: dict[int, Any] = {}

    def counter(self, status: int) -> Any:
        counter = self.requests.get(status)
        if counter is None:
            number = str(self.revision.number) if self.revision is not None else ""
            counter = self.requests[status] = metrics.REQUESTS.labels(
                self.route.workspace, self.route.name, number, str(status))
        return counter


class Gateway:
    def __init__(self, django_app: Callable, *, refresh_seconds: float, probe_seconds: float, max_body: int,
                 queue_timeout: float, slots_dir: str | os.PathLike | None = None, metrics_token: str = "",
                 recorder: Any = None, static: Any = None, body_timeout: float = 30.0,
                 head_timeout: float = 10.0) -> None:
        self.django = django_app
        self.static = static  # gateway.static.StaticFiles: /static/ answered here, off Django's one sync thread
        self.refresh_seconds = refresh_seconds
        self.probe_seconds = probe_seconds
        self.max_body = max_body
        self.queue_timeout = queue_timeout
        self.body_timeout = body_timeout  # gateway.server: a scoring body must arrive this soon after its head
        self.head_timeout = head_timeout  # gateway.server: any head must arrive this soon after its first byte
        # Shared by every web process of this host, so a service's limits hold across workers.
        self.slots = SlotFolder(slots_dir) if slots_dir is not None else None
        # Touched by table.mark_changed() after a key is regenerated or a service deleted.
        self.changed_file = Path(slots_dir) / CHANGED_FILE if slots_dir is not None else None
        self.metrics_token = metrics_token
        self.recorder = recorder
        self.table = Table()
        self.loaded_at = 0.0
        self.read_tried_at = 0.0
        self.balancer = Balancer()
        self.limiters: dict[str, Limiter] = {}
        self.shadow_in_flight: dict[str, int] = {}
        self.shadow_warned: dict[str, float] = {}  # service id -> when its shadow's failure was last logged
        self.model_versions: dict = {}
        self.labelled: dict[tuple[int, int], Labelled] = {}  # (id(route), id(revision)): emptied with each new table
        self.upstream = Upstream(connect_timeout=CONNECT_TIMEOUT)  # keep-alive connections to the replicas
        self.db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-table")
        self._started: asyncio.Future | None = None
        self._refreshing: asyncio.Future | None = None
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()

    # --- start and stop ---------------------------------------------------------------------

    async def start(self) -> None:
        """Reads the table once and starts the refresher and the readiness probe (once)."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            try:
                await self.refresh()
                self._tasks = [asyncio.create_task(self._refresh_loop()), asyncio.create_task(self._probe_loop())]
                if self.recorder is not None:
                    self._tasks.append(asyncio.create_task(self.recorder.loop(self.db)))
            except BaseException as exc:
                self._started.set_exception(exc)
                raise
            self._started.set_result(None)
        await self._started

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.recorder is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(self.db, self.recorder.flush)
            except Exception:  # noqa: BLE001 - stopping anyway; the rows of the last seconds are lost
                logger.exception("could not store the last traffic figures")
        self.upstream.close()
        self.db.shutdown(wait=False)
        metrics.forget_process()

    def _may_reread(self) -> bool:
        """At most one miss-driven read every MISS_REFRESH_SECONDS, counted from the last attempt
        (a failing database is not asked again by every request)."""
        return time.monotonic() - max(self.loaded_at, self.read_tried_at) >= MISS_REFRESH_SECONDS

    async def _reread(self, ref: str, key: str) -> Route | None:
        """The route of ``ref`` for ``key`` in a fresh read of the table (the one we have if it fails)."""
        try:
            return (await self.refresh()).find(ref, key)
        except Exception:  # noqa: BLE001 - answered with the table we have
            return self.table.find(ref, key)

    async def refresh(self) -> Table:
        """Re-reads the table (concurrent callers share one read)."""
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        loop = asyncio.get_running_loop()
        self._refreshing = loop.create_future()
        self.read_tried_at = time.monotonic()
        try:
            table = await loop.run_in_executor(
                self.db, lambda: load_table(model_versions=self.model_versions))
            self.table = table
            self.labelled = {}
            self.loaded_at = time.monotonic()
            self.balancer.forget_except(table.replicas())
            self._refreshing.set_result(table)
            return table
        except BaseException as exc:
            self._refreshing.set_exception(exc)
            self._refreshing.exception()  # retrieved: waiters get it raised
            raise
        finally:
            self._refreshing = None

    async def _refresh_loop(self) -> None:
        """Reads the table every ``refresh_seconds``, and at once when ``table.mark_changed`` was
        called in any process on this host (its file's time is looked at every 50 ms)."""
        path = self.changed_file
        stamp = changed_stamp(path) if path else None
        while True:
            due = time.monotonic() + self.refresh_seconds
            while time.monotonic() < due:
                await asyncio.sleep(min(CHANGE_POLL_SECONDS, self.refresh_seconds))
                if path is not None:
                    now = changed_stamp(path)
                    if now != stamp:
                        stamp = now
                        break
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database may be restarting: keep the last table, retry
                logger.exception("could not read the routing table; keeping the last one")
                await asyncio.sleep(1.0)

    async def _probe_loop(self) -> None:
        """Asks every replica for /ready every ``probe_seconds``; a replica that is not ready gets
        no traffic until it is again."""
        while True:
            await asyncio.sleep(self.probe_seconds)
            replicas = list(self.table.replicas())
            if replicas:
                results = await asyncio.gather(*(self._probe(r) for r in replicas), return_exceptions=True)
                for replica, ready in zip(replicas, results):
                    if ready is not None:
                        self.balancer.probed(replica, ready is True)

    async def _probe(self, replica) -> bool | None:
        """True: it answered /ready with 200; False: it answered otherwise or refused the
        connection; None: no answer in time (all its workers are busy, which is not unready)."""
        try:
            answer = await self.upstream.request(replica.host, replica.port, b"GET", b"/ready", b"", None,
                                                 timeout=PROBE_TIMEOUT)
            return answer.status == 200
        except ReplicaTimeout:
            return None
        except (ConnectFailed, ReplicaFailed):
            return False

    # --- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind == "http":
            path = scope["path"]
            match = SCORING_PATH.match(path)
            if match is not None:
                await self._scoring(scope, receive, send, match["ref"], match["rest"])
                return
            if path == "/metrics":
                await self._metrics(scope, send)
                return
            if self.static is not None and path.startswith(self.static.prefix):
                static_file = self.static.find(path)
                if static_file is not None:
                    await self.static.answer(scope, send, static_file)
                    return
        await self.django(scope, receive, send)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # noqa: BLE001 - told to the server, which stops
                    await send({"type": "lifespan.startup.failed", "message": f"gateway: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _metrics(self, scope: dict, send: Callable) -> None:
        headers = dict(scope["headers"])
        client = (scope.get("client") or ("", 0))[0]
        if self.metrics_token:
            allowed = _bearer(headers.get(b"authorization", b"")) == self.metrics_token
        else:
            allowed = client in ("127.0.0.1", "::1")
        if not allowed:
            await _respond(send, 403, _error("The metrics are for Prometheus: scrape them from this host, or send "
                                             "'Authorization: Bearer <MLPORTAL_METRICS_TOKEN>'.", "forbidden"))
            return
        body, content_type = metrics.exposition()
        await _respond(send, 200, body, content_type.encode())

    async def _scoring(self, scope: dict, receive: Callable, send: Callable, ref: str, rest: str) -> None:
        headers = dict(scope["headers"])
        try:
            reply = await self.score(scope["method"], ref, rest, scope.get("query_string") or b"", headers,
                                     lambda: _read_body(receive, headers, self.max_body))
        except ClientGone:
            return  # a part of a body is never forwarded: it could score a truncated input
        await _respond(send, reply.status, reply.body, reply.content_type, extra=reply.headers)

    async def score(self, method: str, ref: str, rest: str, query: bytes, headers: dict,
                    read_body: Callable[[], Any]) -> Reply:
        """The answer to one scoring request, whichever server read it (``Gateway.__call__`` for
        the ASGI cycle, ``gateway.server`` below it): ``headers`` maps lower-case names to values;
        ``read_body()`` is awaited once the key looks like one, and gives the body, or None when
        it is over ``max_body``. Counts the answer in the metrics and starts its shadow copy."""
        started = time.monotonic()
        await self.start()
        header = headers.get(b"authorization", b"")
        if not header:
            return Reply(401, _error("This service needs a key: send 'Authorization: Bearer <service key>' "
                                     "(the keys are on the service's page).", "unauthorized"), extra=UNAUTHORIZED)
        key = _bearer(header)
        if key is None:
            return Reply(401, _error("Send the service key as 'Authorization: Bearer <service key>'.", "unauthorized"),
                         extra=UNAUTHORIZED)
        body = await read_body()
        if body is None:
            return Reply(413, _error(f"The request body is over the limit of {self.max_body} bytes: send less data.",
                                     "too_large"))
        route = self.table.find(ref, key)
        if (route is not None and (route.live is None or not route.live.replicas)) \
                or (route is None and self._may_reread()):
            # No ready replica: always read again (one read in flight, shared), since the table
            # may be from just before the service turned healthy. An unknown key: at most every 0.2 s.
            route = await self._reread(ref, key)
        if route is None:
            return _no_service_for_key(ref)
        forced = None
        if FORCE_HEADER in headers:
            forced, problem = _forced_revision(route, headers[FORCE_HEADER])
            number = _revision_number(headers[FORCE_HEADER])
            wanted = route.revision(number) if number is not None else None
            if number is not None and (wanted is None or not wanted.replicas) and self._may_reread():
                # A rollout started since the last read (seen in CI: a canary's revision forced
                # right after it turned running got 400 'does not serve revision 2'). At most
                # every 0.2 s, as for an unknown key.
                route = await self._reread(ref, key)
                if route is None:  # the key stopped working meanwhile
                    return _no_service_for_key(ref)
                forced, problem = _forced_revision(route, headers[FORCE_HEADER])
            if problem:
                return Reply(400, _error(problem, "unknown_revision", {"X-MLPortal-Revision": problem}),
                             extra=_route_headers(route, route.live))
        upstream = "/score" if rest.startswith("score") else "/" + rest
        if query:
            upstream += "?" + query.decode("latin-1")
        revision = choose_revision(route, forced)
        if forced is None and revision is not route.live and not self.balancer.order(revision.replicas):
            revision = route.live  # no ready replica of the canary right now: the live revision answers
        if revision is None or not revision.replicas:
            label = f"revision {forced}" if forced is not None else f"service '{route.name}'"
            return self._finish(route, revision, 503, _error(
                f"{label[0].upper()}{label[1:]} has no ready replica (it is {route.status}); try again once it is healthy.",
                "not_ready"), started, extra=[(b"retry-after", b"5")])
        limiter = self.limiters.get(route.service_id)
        if limiter is None:
            limiter = self.limiters[route.service_id] = Limiter(
                self.slots.for_service(route.service_id) if self.slots is not None else None)
        slot = limiter.try_acquire(route.concurrency)
        if slot is None:
            queued = metrics.QUEUED.labels(route.workspace, route.name)
            queued.inc()
            try:
                slot = await limiter.acquire(route.concurrency, route.queue, self.queue_timeout)
            except (Full, asyncio.TimeoutError):
                metrics.REJECTED.labels(route.workspace, route.name).inc()
                return self._finish(route, revision, 503, _error(
                    f"Service '{route.name}' is at its limit of {route.concurrency} requests at once with {route.queue} "
                    "waiting: retry after a second, or raise its limits (service limits).", "overloaded"),
                    started, extra=[(b"retry-after", b"1")])
            finally:
                queued.dec()
        try:
            answer = await self._send(route, revision, method, upstream, body, headers)
        finally:
            limiter.release(slot)
        reply = self._finish(route, answer.revision, answer.status, answer.body, started,
                             content_type=answer.content_type, replica=answer.replica,
                             extra=[(b"x-request-id", answer.request_id)] if answer.request_id else None)
        if forced is None and method == "POST" and answer.revision is route.live:
            shadow = mirrored(route)
            if shadow is not None:
                self._mirror(route, shadow, method, upstream, body, headers, answer, time.monotonic() - started)
        return reply

    async def _send(self, route: Route, revision: Revision, method: str, path: str, body: bytes, headers: dict,
                    *, again: bool = True) -> Answer:
        """Sends the request to the least busy usable replica of ``revision``, skipping those that
        refuse the connection. Once a replica took the request, its answer (or its failure) is the
        answer: it may have run, so it is never sent elsewhere."""
        errors = []
        request_headers = b"Content-Type: %s\r\nAuthorization: Bearer %s\r\n" % (
            headers.get(b"content-type", b"application/json"), route.proxy_key.encode("latin-1"))
        accept = headers.get(b"accept")
        if accept:
            request_headers += b"Accept: %s\r\n" % accept
        request_id = headers.get(b"x-request-id")
        if request_id:  # the replica keeps it when well formed (else makes one) and answers it
            request_headers += b"X-Request-Id: %s\r\n" % request_id
        data = body if method not in ("GET", "HEAD") else None
        verb, target = method.encode("ascii"), path.encode("latin-1")
        in_flight = self._labelled(route, revision).in_flight
        for replica in self.balancer.order(revision.replicas):
            state = self.balancer.state(replica)
            state.outstanding += 1
            in_flight.inc()
            try:
                response = await self.upstream.request(replica.host, replica.port, verb, target, request_headers, data,
                                                       timeout=SCORE_TIMEOUT)
                return Answer(response.status, response.body, response.content_type or b"application/json",
                              replica.number, revision, response.request_id or None)
            except ConnectFailed as exc:
                # Never connected: the request did not reach run(); the next replica may take it.
                self.balancer.refused(replica)
                errors.append(f"replica {replica.number}: {exc}")
            except ReplicaTimeout:
                return Answer(504, _error(f"Replica {replica.number} of service '{route.name}' did not answer within "
                                          f"{SCORE_TIMEOUT:g} s.", "gateway_timeout"), b"application/json", replica.number, revision)
            except ReplicaFailed as exc:
                # It went away mid-answer (killed, crashed) or answered garbage: no more traffic
                # until it is ready again.
                self.balancer.refused(replica)
                return Answer(502, _error(f"Replica {replica.number} of service '{route.name}' failed while answering "
                                          f"({exc}); the request is not retried elsewhere, since it may have run.",
                                          "bad_gateway"), b"application/json", replica.number, revision)
            finally:
                state.outstanding -= 1
                in_flight.dec()
        if again:
            # Every replica we knew refused: the table may be a moment old (an update just
            # switched replicas). Read it again and try the same revision's replicas once more.
            try:
                table = await self.refresh()
            except Exception:  # noqa: BLE001 - answered below with what we know
                table = self.table
            fresh = table.by_id.get(route.service_id)
            current = fresh.revision(revision.number) if fresh is not None else None
            if current is None and fresh is not None and revision.role == "live":
                current = fresh.live
            if current is not None and current.replicas:
                return await self._send(fresh, current, method, path, body, headers, again=False)
        detail = "; ".join(errors) or "no replica is ready"
        return Answer(503, _error(f"No replica of service '{route.name}' took the request ({detail}); try again shortly.",
                                  "not_ready"), b"application/json", None, revision)

    def _labelled(self, route: Route, revision: Revision | None) -> Labelled:
        key = (id(route), id(revision))
        labelled = self.labelled.get(key)
        if labelled is None or labelled.route is not route or labelled.revision is not revision:
            labelled = self.labelled[key] = Labelled(route, revision)
        return labelled

    def _finish(self, route: Route, revision: Revision | None, status: int, body: bytes, started: float, *,
                content_type: bytes = b"application/json", replica: int | None = None,
                extra: list | None = None) -> Reply:
        """The reply of a request that found its service, counted in the metrics and traffic rows."""
        seconds = time.monotonic() - started
        labelled = self._labelled(route, revision)
        headers = labelled.headers.copy()
        if replica is not None:
            headers.append((b"x-mlportal-replica", b"%d" % replica))
        headers.append((b"x-mlportal-latency-ms", b"%.1f" % (seconds * 1000)))
        if extra:
            headers += extra
        labelled.counter(status).inc()
        labelled.latency.observe(seconds)
        if self.recorder is not None and revision is not None:
            self.recorder.count(route.service_id, revision.number, status, seconds)
        return Reply(status, body, content_type, headers)

    def _mirror(self, route: Route, shadow: Revision, method: str, path: str, body: bytes, headers: dict,
                live: Answer, live_seconds: float) -> None:
        """Sends a copy of an answered request to the shadow revision in the background and
        records whether its answer agreed; the caller already has the live answer."""
        if self.shadow_in_flight.get(route.service_id, 0) >= MAX_SHADOW_PER_SERVICE:
            return
        self.shadow_in_flight[route.service_id] = self.shadow_in_flight.get(route.service_id, 0) + 1

        # The copy goes without the caller's request id: the shadow's captured row gets an id of its
        # own, so it never takes the live row's place in the service's data (rows are unique by id).
        headers = {name: value for name, value in headers.items() if name != b"x-request-id"}

        async def run() -> None:
            started = time.monotonic()
            try:
                answer = await self._send(route, shadow, method, path, body, headers, again=False)
                seconds = time.monotonic() - started
                agreed = answer.status == live.status and _same_json(answer.body, live.body)
                metrics.SHADOW.labels(route.workspace, route.name, str(shadow.number), "yes" if agreed else "no").inc()
                if self.recorder is not None:
                    self.recorder.shadow(route.service_id, shadow.number, answer.status, seconds, agreed)
                if answer.status >= 500:
                    self._warn_shadow(route, shadow, f"answered {answer.status}: {_message(answer.body)}")
            except Exception as exc:  # noqa: BLE001 - the caller has its answer; the shadow's failure is logged
                self._warn_shadow(route, shadow, f"failed ({type(exc).__name__}: {exc})", exc_info=True)
            finally:
                self.shadow_in_flight[route.service_id] -= 1

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _warn_shadow(self, route: Route, shadow: Revision, what: str, *, exc_info: bool = False) -> None:
        """Logs that the shadow revision of ``route`` failed a copy, at most every SHADOW_WARN_SECONDS
        per service (a shadow failing on every request must not flood the log)."""
        now = time.monotonic()
        if now - self.shadow_warned.get(route.service_id, -SHADOW_WARN_SECONDS) < SHADOW_WARN_SECONDS:
            return
        self.shadow_warned[route.service_id] = now
        logger.warning("the shadow revision %s of service '%s' %s (callers are unaffected; logged at most every %g s)",
                       shadow.number, route.name, what, SHADOW_WARN_SECONDS, exc_info=exc_info)


def _same_json(a: bytes, b: bytes) -> bool:
    if a == b:
        return True
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def _bearer(header: bytes) -> str | None:
    scheme, _, key = header.decode("latin-1").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


def _no_service_for_key(ref: str) -> Reply:
    return Reply(401, _error(f"No service '{ref[:80]}' accepts this key: check the service name and its keys.",
                             "unauthorized"), extra=UNAUTHORIZED)


def _revision_number(value: bytes) -> int | None:
    """The X-MLPortal-Revision header's number, or None when it is not one."""
    try:
        return int(value.decode("latin-1").strip())
    except ValueError:
        return None


def _forced_revision(route: Route, value: bytes) -> tuple[int | None, str | None]:
    serving = ", ".join(str(r.number) for r in route.revisions if r.role != "shadow") or "none"
    number = _revision_number(value)
    if number is None:
        return None, f"X-MLPortal-Revision must be a revision number; service '{route.name}' serves revision {serving}."
    revision = route.revision(number)
    if revision is None or revision.role == "shadow":
        return None, (f"Service '{route.name}' does not serve revision {number}: it serves revision {serving}"
                      + (" (the shadow revision never answers callers)" if revision is not None else "") + ".")
    return number, None


def _route_headers(route: Route, revision: Revision | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-mlportal-service", route.name.encode())]
    if revision is not None:
        headers += [(b"x-mlportal-revision", str(revision.number).encode()),
                    (b"x-mlportal-image", revision.image_ref.encode()),
                    (b"x-mlportal-model-version", revision.model_version.encode("utf-8", "replace"))]
    return headers


def _message(body: bytes) -> str:
    """The error message of a JSON error answer, or the start of the body, printable and short."""
    try:
        text = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text[:200])


async def _read_body(receive: Callable, headers: dict, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` bytes (stops reading there); raises
    ClientGone when the caller disconnects before it is whole."""
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                return None
        except ValueError:
            pass
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _respond(send: Callable, status: int, body: bytes, content_type: bytes = b"application/json",
                   extra: list | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build(django_app: Callable) -> Gateway:
    """The gateway around ``django_app``, configured from the settings."""
    from django.conf import settings

    from gateway.recorder import Recorder
    from gateway.static import StaticFiles

    return Gateway(
        django_app, refresh_seconds=settings.MLPORTAL_GATEWAY_REFRESH_SECONDS,
        probe_seconds=settings.MLPORTAL_GATEWAY_PROBE_SECONDS, max_body=settings.MLPORTAL_MAX_BODY_BYTES,
        queue_timeout=settings.MLPORTAL_GATEWAY_QUEUE_TIMEOUT, body_timeout=settings.MLPORTAL_GATEWAY_BODY_TIMEOUT,
        head_timeout=settings.MLPORTAL_GATEWAY_HEAD_TIMEOUT,
        slots_dir=settings.MLPORTAL_GATEWAY_SLOTS_DIR,
        metrics_token=settings.MLPORTAL_METRICS_TOKEN, recorder=Recorder(), static=StaticFiles(),
    )
