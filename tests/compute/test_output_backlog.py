"""A run's output is never cut while the worker is still storing it: the readers' queue is bounded
(a script printing faster than the worker stores waits on its stdout; the worker does not buffer
its whole output), and the grace after the process ends counts from the last line delivered, not
from the end of the process (1,000,000 metric points through Docker kept only 340,000 before)."""
from __future__ import annotations

import queue
import threading
import time

from compute import runner


def test_a_backlog_still_being_delivered_after_the_process_ended_is_delivered_whole(monkeypatch):
    monkeypatch.setattr(runner, "STREAM_GRACE_S", 0.2)
    lines: queue.Queue = queue.Queue(maxsize=runner.LINE_QUEUE_MAX)
    total = 400
    frames = [(1, f"line {i}\n".encode()) for i in range(total)]
    runner._start_readers([iter(frames)], lines)
    delivered = []

    def slow_sink(line: str) -> None:  # a busy database: 400 lines take ~1.2 s, far past the grace
        time.sleep(0.003)
        delivered.append(line)

    verdict = runner._supervise(lines=lines, on_output=slow_sink, should_cancel=lambda: False, timeout_s=60,
                                is_running=lambda: False, kill=lambda: None)
    assert verdict is None and len(delivered) == total and delivered[-1] == f"line {total - 1}"


def test_the_readers_stop_when_the_queue_is_full():
    lines: queue.Queue = queue.Queue(maxsize=5)
    read = []

    def frames():
        for i in range(100):
            read.append(i)
            yield 1, f"{i}\n".encode()

    runner._start_readers([frames()], lines)
    time.sleep(0.3)
    assert lines.qsize() == 5 and len(read) < 10  # nothing more is read until the consumer takes lines
    assert runner.LINE_QUEUE_MAX <= 100_000 and isinstance(threading.active_count(), int)
