"""What the worker writes while a run goes: log batches (cleaned, capped), metrics kept out of the
log, the guarded claim, the end state, and the lost-run sweep's database side."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from mlportal_runtime import METRIC_PREFIX
from runs import reconcile, services, worker
from runs.models import Metric, Run, RunMetricSummary
from runs.selectors import log_since

pytestmark = pytest.mark.django_db


@pytest.fixture
def claimed(owner, blank):
    run = services.run_submit(project=blank, script="train.py", user=owner)
    return worker.run_claim(run_id=run.id, worker="tests:1")


def test_a_run_is_claimed_once(owner, blank):
    run = services.run_submit(project=blank, script="train.py", user=owner)
    assert worker.run_claim(run_id=run.id, worker="a:1") is not None
    assert worker.run_claim(run_id=run.id, worker="b:2") is None
    run.refresh_from_db()
    assert run.status == "preparing" and run.worker == "a:1" and run.started_at and run.heartbeat_at


def test_executing_a_run_that_is_not_queued_starts_nothing(owner, blank):
    run = services.run_submit(project=blank, script="train.py", user=owner)
    services.run_cancel(run=run, user=owner)
    assert worker.execute(run.id) == "skipped"
    run.refresh_from_db()
    assert run.status == "canceled" and run.started_at is None and not run.container_id


def test_metric_lines_become_metrics_and_stay_out_of_the_log(claimed):
    sink = worker.RunSink(claimed)
    sink.output("plain line")
    sink.output(METRIC_PREFIX + '{"name": "Accuracy", "value": 0.8, "step": null, "time": 1700000000.5}')
    sink.output(METRIC_PREFIX + '{"name": "loss", "value": 0.5, "step": 1, "time": 1700000001}')
    sink.output(METRIC_PREFIX + '{"name": "loss", "value": 0.25, "step": 2, "time": 1700000002}')
    sink.output(METRIC_PREFIX + "{broken json")
    sink.flush()
    text, _ = log_since(claimed, 0)
    assert text == "plain line\n" + METRIC_PREFIX + "{broken json\n"
    assert Metric.objects.filter(run=claimed).count() == 3
    summary = {s.name: (s.value, s.step, s.count) for s in RunMetricSummary.objects.filter(run=claimed)}
    assert summary == {"Accuracy": (0.8, None, 1), "loss": (0.25, 2, 2)}


def test_log_lines_lose_ansi_codes_and_bad_bytes_are_replaced(claimed):
    worker.run_append_log(run_id=claimed.id, workspace_id=claimed.workspace_id,
                            lines=["\x1b[31mred\x1b[0m text", b"caf\xe9 \xff".decode("utf-8", "replace"), "bell\x07 <b>"])
    text, _ = log_since(claimed, 0)
    assert text == "red text\ncaf\ufffd \ufffd\nbell <b>\n"
    assert worker.clean_log_line(b"\x1b]0;title\x07ok\xff") == "ok\ufffd"


@override_settings(MLPORTAL_LOG_MAX_BYTES=1024)
def test_a_log_over_its_cap_is_truncated_with_a_visible_note(claimed):
    for i in range(30):
        worker.run_append_log(run_id=claimed.id, workspace_id=claimed.workspace_id, lines=[f"line {i:03d} " + "x" * 90])
    text, _ = log_since(claimed, 0)
    assert "line 000" in text and "line 029" not in text
    assert text.rstrip().endswith("later lines were dropped]") and "[log truncated" in text
    assert text.count("[log truncated") == 1
    claimed.refresh_from_db()
    assert claimed.log_truncated and claimed.log_bytes <= 1024


def test_the_sink_flushes_from_its_thread_within_a_second(transactional_db, owner, workspace):
    project = services.project_create(workspace=workspace, name="threaded", user=owner)
    services.project_file_put(project=project, path="a.py", content=b"", user=owner)
    run = Run.objects.create(workspace=workspace, project=project, number=1, script="a.py", status="preparing",
                             heartbeat_at=timezone.now() - timedelta(minutes=5))
    sink = worker.RunSink(run).start()
    try:
        sink.output("first")
        from tests.helpers import wait_until

        wait_until(lambda: log_since(run, 0)[0] == "first\n", timeout=1.0, interval=0.05, message="the line in the log")
        wait_until(lambda: Run.objects.get(id=run.id).heartbeat_at > timezone.now() - timedelta(seconds=5), timeout=3,
                   message="a fresh heartbeat")
    finally:
        sink.stop()


def test_finishing_keeps_a_cancel_that_came_first(claimed, owner):
    services.run_cancel(run=claimed, user=owner)
    assert worker.run_finish(run_id=claimed.id, status="completed", exit_code=137) == "canceled"
    claimed.refresh_from_db()
    assert claimed.status == "canceled" and claimed.exit_code == 137


@override_settings(MLPORTAL_LOST_AFTER_SECONDS=30)
def test_the_sweep_marks_a_silent_run_lost_and_leaves_a_live_one(owner, blank, claimed):
    fresh = services.run_submit(project=blank, script="train.py", user=owner)
    worker.run_claim(run_id=fresh.id, worker="tests:2")
    Run.objects.filter(id=claimed.id).update(heartbeat_at=timezone.now() - timedelta(seconds=31))
    result = reconcile.sweep_lost_runs()
    assert result["lost"] == [str(claimed.id)]
    claimed.refresh_from_db()
    assert claimed.status == "lost" and "stopped reporting" in claimed.status_reason and claimed.ended_at
    assert "stopped reporting" in log_since(claimed, 0)[0]
    assert Run.objects.get(id=fresh.id).status == "preparing"


def test_a_script_logging_faster_than_the_database_writes_waits_so_the_worker_holds_a_bounded_number_of_points(
        transactional_db, owner, workspace, monkeypatch):
    """Issue 18: the worker's memory stays bounded while it ingests. While the writer is held up
    (here: the test holds the flush lock, as a slow database would), the thread reading the
    script's output stops reading once MAX_PENDING_METRICS points wait, so the script blocks on
    its stdout instead of the worker buffering a million points; every point is written after."""
    import threading
    import time

    from tests.helpers import wait_until

    monkeypatch.setattr(worker, "METRIC_BATCH", 100)
    monkeypatch.setattr(worker, "MAX_PENDING_METRICS", 200)
    project = services.project_create(workspace=workspace, name="flood", user=owner)
    services.project_file_put(project=project, path="a.py", content=b"", user=owner)
    run = Run.objects.create(workspace=workspace, project=project, number=1, script="a.py", status="running",
                             heartbeat_at=timezone.now())
    sink = worker.RunSink(run).start()
    read = []

    def script_output():
        for step in range(1000):
            sink.output(METRIC_PREFIX + '{"name": "loss", "value": 0.5, "step": %d, "time": null}' % step)
            read.append(step)

    reader = threading.Thread(target=script_output, daemon=True)
    try:
        with sink._flush_lock:
            reader.start()
            time.sleep(1.5)
            assert reader.is_alive(), "the reader went on buffering while nothing could be written"
            assert len(read) <= 200 and sink.metric_count <= 200
        reader.join(timeout=60)
        assert not reader.is_alive() and len(read) == 1000
        wait_until(lambda: Metric.objects.filter(run=run).count() == 1000, timeout=10, interval=0.1,
                   message="every point written once the writer was free")
    finally:
        sink.stop()
