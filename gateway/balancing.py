"""Choosing a replica (least outstanding requests over the ready ones) and holding a service to its
concurrency limit and queue bound.

Balancing state is per web-server process (each worker process of the ASGI server counts the
requests it sent); the limits are shared by every process on the host through ``gateway.slots``.
"""
from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from dataclasses import dataclass

from gateway.slots import QUEUE_BASE
from gateway.table import Replica, Revision, Route

DOWN_SECONDS = 2.0  # a replica that refused a connection is left out this long (or until a probe says ready)


@dataclass
class ReplicaState:
    outstanding: int = 0
    ready: bool = True  # replicas are written to the table only once they answered /ready
    down_until: float = 0.0

    def usable(self, now: float) -> bool:
        return self.ready and now >= self.down_until


class Balancer:
    """Outstanding-request counts and readiness per replica (its container at its address: a new
    container on a port an old one had starts afresh)."""

    def __init__(self) -> None:
        self.states: dict[Replica, ReplicaState] = {}
        self._tie = itertools.count()

    def state(self, replica: Replica) -> ReplicaState:
        state = self.states.get(replica)
        if state is None:
            state = self.states[replica] = ReplicaState()
        return state

    def order(self, replicas: tuple[Replica, ...]) -> list[Replica]:
        """The usable replicas, fewest outstanding requests first (ties rotate, so equal replicas
        share the load); empty when none is usable."""
        now = time.monotonic()
        usable = [r for r in replicas if self.state(r).usable(now)]
        if len(usable) <= 1:
            return usable
        start = next(self._tie) % len(usable)
        rotated = usable[start:] + usable[:start]
        return sorted(rotated, key=lambda r: self.states[r].outstanding)

    def refused(self, replica: Replica) -> None:
        self.state(replica).down_until = time.monotonic() + DOWN_SECONDS

    def probed(self, replica: Replica, ready: bool) -> None:
        state = self.state(replica)
        state.ready = ready
        if ready:
            state.down_until = 0.0

    def forget_except(self, replicas: set[Replica]) -> None:
        for replica in list(self.states):
            if replica not in replicas and not self.states[replica].outstanding:
                del self.states[replica]


def choose_revision(route: Route, forced: int | None = None, draw: float | None = None) -> Revision | None:
    """The revision that answers a request: ``forced`` when given, else the canary for its weight
    in percent of requests, else the live one. The shadow revision never answers."""
    if forced is not None:
        revision = route.revision(forced)
        return revision if revision is not None and revision.role != "shadow" else None
    canary = route.canary
    if canary is not None and canary.weight > 0 and canary.replicas:
        if (random.random() if draw is None else draw) * 100 < canary.weight:
            return canary
    return route.live


def mirrored(route: Route, draw: float | None = None) -> Revision | None:
    """The shadow revision when this request is one of its share to mirror, else None."""
    shadow = route.shadow
    if shadow is None or shadow.weight <= 0 or not shadow.replicas:
        return None
    return shadow if (random.random() if draw is None else draw) * 100 < shadow.weight else None


class Full(Exception):
    """The service is at its concurrency limit and its queue is full."""


POLL_SECONDS = 0.002  # how often a waiting process looks for a slot another process gave back


class Limiter:
    """At most ``limit`` requests of a service at once; up to ``queue`` more wait; past that
    ``acquire`` raises Full at once.

    With a ``SlotFile`` (``gateway.slots``) the slots and the queue's places are shared by every
    web process on the host, so the limits hold for the portal as a whole: a slot this process
    gives back goes to its own first waiter, and while any of its requests wait, one poller looks
    every ``POLL_SECONDS`` for a slot another process gave back (first come first served within a
    process, roughly so across processes). Without one, they count this process only.
    ``acquire`` returns a slot token that ``release`` takes back."""

    def __init__(self, slots=None) -> None:
        self.slots = slots
        self.active = 0  # requests of this process holding a slot
        self.limit = 1
        self.waiting: deque[asyncio.Future] = deque()
        self._poller: asyncio.Task | None = None

    def try_acquire(self, limit: int) -> int | None:
        """A slot token at once, or None when the service is at its limit or requests wait."""
        self.limit = limit
        if self.waiting:
            return None
        return self._take()

    def _take(self) -> int | None:
        if self.slots is None:
            if self.active >= self.limit:
                return None
            self.active += 1
            return 0
        slot = self.slots.take(0, self.limit)
        if slot is not None:
            self.active += 1
        return slot

    async def acquire(self, limit: int, queue: int, timeout: float) -> int:
        slot = self.try_acquire(limit)
        if slot is not None:
            return slot
        place = None
        if self.slots is not None:
            place = self.slots.take(QUEUE_BASE, queue) if queue > 0 else None
            if place is None:
                raise Full()
        elif len(self.waiting) >= queue:
            raise Full()
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        if self.slots is not None and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            if future.done() and not future.cancelled():
                self.release(future.result())  # the slot came as we gave up: pass it on
            else:
                future.cancel()
                try:
                    self.waiting.remove(future)
                except ValueError:
                    pass
            raise
        finally:
            if place is not None:
                self.slots.give(place)

    async def _poll(self) -> None:
        """Hands slots other processes gave back to this process's waiters, while any wait."""
        while self.waiting:
            await asyncio.sleep(POLL_SECONDS)
            while self.waiting:
                if self.waiting[0].done():
                    self.waiting.popleft()
                    continue
                slot = self._take()
                if slot is None:
                    break
                self.waiting.popleft().set_result(slot)

    def release(self, slot: int = 0) -> None:
        """Takes back a slot: to this process's first waiter, else to everyone."""
        if self.slots is None or slot < self.limit:
            while self.waiting:
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(slot)
                    return
        self.active -= 1
        if self.slots is not None:
            self.slots.give(slot)
