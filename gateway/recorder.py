"""Counts each answered request per service, revision and minute in memory and writes the
running totals to ``TrafficMinute`` every ``FLUSH_SECONDS`` (one upsert per row, off the event
loop), and drops rows older than ``KEEP_HOURS``."""
from __future__ import annotations

import asyncio
import bisect
import logging
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone

from gateway.metrics import LATENCY_BUCKETS

logger = logging.getLogger("mlportal.gateway")

FLUSH_SECONDS = 2.0
KEEP_HOURS = 24
PRUNE_SECONDS = 600


class Figures:
    __slots__ = ("requests", "errors", "latency_sum", "buckets", "shadow_requests", "shadow_agreed", "dirty")

    def __init__(self) -> None:
        self.requests = self.errors = self.shadow_requests = self.shadow_agreed = 0
        self.latency_sum = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.dirty = True

    def add(self, status: int, seconds: float) -> None:
        self.requests += 1
        self.errors += status >= 500
        self.latency_sum += seconds
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.dirty = True


def _minute(number: int) -> datetime:
    return datetime.fromtimestamp(number * 60, tz=timezone.utc)


class Recorder:
    def __init__(self) -> None:
        self.writer = secrets.token_hex(8)
        self.rows: dict[tuple[str, int, int], Figures] = {}  # (service, revision, minute since the epoch)
        self.lock = threading.Lock()  # count() runs on the loop, flush() on the database thread
        self.pruned = 0.0

    def _row(self, service_id: str, revision: int) -> Figures:
        key = (service_id, revision, int(time.time() // 60))  # a datetime is made at the flush only
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Figures()
        return row

    def count(self, service_id: str, revision: int, status: int, seconds: float) -> None:
        with self.lock:
            self._row(service_id, revision).add(status, seconds)

    def shadow(self, service_id: str, revision: int, status: int, seconds: float, agreed: bool) -> None:
        with self.lock:
            row = self._row(service_id, revision)
            row.add(status, seconds)
            row.shadow_requests += 1
            row.shadow_agreed += agreed

    async def loop(self, executor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await loop.run_in_executor(executor, self.flush)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - figures stay in memory and go with the next flush
                logger.exception("could not store traffic figures")

    def flush(self, *, reconnect: bool = True) -> int:
        """Writes the rows that changed since the last flush; forgets finished minutes once
        written. Returns how many rows it wrote. ``reconnect``: drop a broken or expired database
        connection first (the gateway's database thread; not inside a test's transaction)."""
        from django.db import close_old_connections

        from deployments.models import Service
        from gateway.models import TrafficMinute

        if reconnect:
            close_old_connections()
        current = int(time.time() // 60)
        with self.lock:
            changed = [(key, row.requests, row.errors, row.latency_sum, list(row.buckets), row.shadow_requests,
                        row.shadow_agreed) for key, row in self.rows.items() if row.dirty]
            for key, row in list(self.rows.items()):
                row.dirty = False
                if key[2] < current:
                    del self.rows[key]
        if changed:
            alive = set(str(pk) for pk in Service.objects.filter(pk__in={key[0] for key, *_ in changed}).values_list("pk", flat=True))
            objs = [TrafficMinute(service_id=key[0], revision=key[1], minute=_minute(key[2]), writer=self.writer, requests=requests,
                                  errors=errors, latency_sum=latency_sum, latency_buckets=buckets,
                                  shadow_requests=shadow_requests, shadow_agreed=shadow_agreed)
                    for key, requests, errors, latency_sum, buckets, shadow_requests, shadow_agreed in changed
                    if key[0] in alive]
            TrafficMinute.objects.bulk_create(
                objs, update_conflicts=True, unique_fields=["service", "revision", "minute", "writer"],
                update_fields=["requests", "errors", "latency_sum", "latency_buckets", "shadow_requests", "shadow_agreed"])
        if time.monotonic() - self.pruned > PRUNE_SECONDS:
            self.pruned = time.monotonic()
            TrafficMinute.objects.filter(minute__lt=datetime.now(timezone.utc) - timedelta(hours=KEEP_HOURS)).delete()
        return len(changed)
