"""What the sweeps that re-send lost work share: telling that the broker forgot its messages, and
when a piece of queued work is due to be sent again.

A broker restarted without persistence (or flushed) drops every message it held: queued runs and
builds then wait for good. Each sweep keeps one sentinel message in a queue of its own that no
worker consumes; when that message is gone, the broker lost what it held, and the sweep re-sends
all its queued work at once. Without such a sign, work is re-sent when it has waited longer than
MLPORTAL_REQUEUE_AFTER_SECONDS with no worker claiming it (a worker killed with messages it had
prefetched), then again after a gap that doubles with the time it has already waited (capped at
MAX_GAP_SECONDS), so work that is only waiting for a free slot is not re-sent every sweep.

A duplicate is harmless: every task starts with a guarded claim (queued → preparing/building), so
the second delivery of a claimed item does nothing.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from celery import current_app
from kombu import Exchange, Queue
from kombu.exceptions import ChannelError

logger = logging.getLogger(__name__)

MAX_GAP_SECONDS = 1800
SENTINEL_PREFIX = "mlportal.sentinel."


def broker_forgot(scope: str) -> bool:
    """True when the broker no longer holds the sentinel message of `scope` (it restarted empty,
    was flushed, or this is the first sweep ever); leaves a fresh sentinel for the next call.
    Raises the broker's connection error when it cannot be reached (the sweep then waits)."""
    name = SENTINEL_PREFIX + scope
    queue = Queue(name, exchange=Exchange(name, type="direct"), routing_key=name, durable=True)
    with current_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        channel = conn.default_channel
        try:
            _, count, _ = channel.queue_declare(queue=name, passive=True)
        except ChannelError:
            count = 0
        if count:
            return False
        with conn.Producer(channel) as producer:
            producer.publish({"sentinel": scope}, exchange=queue.exchange, routing_key=name, declare=[queue],
                             serializer="json", retry=False)
    logger.info("sweep %s: the broker holds no sentinel (restarted, flushed or first sweep): re-sending queued work", scope)
    return True


def resend_due(*, created_at: datetime, sent_at: datetime | None, now: datetime, after_s: int) -> bool:
    """True when work queued at `created_at` and last sent at `sent_at` (None: only on creation)
    has waited long enough unclaimed to be sent again."""
    sent_at = sent_at or created_at
    waited_before = max(timedelta(0), sent_at - created_at)
    gap = max(timedelta(seconds=after_s), min(timedelta(seconds=MAX_GAP_SECONDS), waited_before))
    return now - sent_at >= gap
