"""The server's process model: init once per worker, timeouts that free the worker, respawns,
parallel workers, clean stops, and apps without a schema."""
import json
import signal
import threading
import time

import pytest

SCORE_PY = '''
import os, signal, time

calls = {"init": 0}

def init():
    calls["init"] += 1
    time.sleep(float(os.environ.get("INIT_SLEEP", "0")))
    if os.environ.get("INIT_FAIL"):
        raise RuntimeError("model.pkl is missing")

def run(data):
    if data.get("exit"):
        os._exit(1)
    if data.get("uninterruptible"):  # like a long C call: SIGALRM cannot get in
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(data["uninterruptible"])
    time.sleep(data.get("sleep", 0))
    if data.get("raise"):
        raise ValueError("the model refused: " + data["raise"])
    return {"pid": os.getpid(), "inits": calls["init"]}
'''


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lifecycle")
    (folder / "score.py").write_text(SCORE_PY)
    (folder / "service_schema.json").write_text(json.dumps({"inputs": {"data": {"kind": "json", "type": "object"}}}))
    return folder


@pytest.fixture(scope="module")
def one_worker(app, start_server):
    return start_server(app, workers=1, MLPORTAL_REQUEST_TIMEOUT="1")


def test_init_runs_once_per_worker(one_worker):
    for _ in range(3):
        assert one_worker.post_json("/score", {"data": {}})[1]["inits"] == 1


def test_a_run_past_the_timeout_gets_504_and_the_worker_serves_the_next_request(one_worker):
    pid = one_worker.post_json("/score", {"data": {}})[1]["pid"]
    started = time.monotonic()
    status, body = one_worker.post_json("/score", {"data": {"sleep": 5}})
    assert status == 504 and body["error"]["code"] == "timeout"
    assert time.monotonic() - started < 3
    assert one_worker.post_json("/score", {"data": {}}) == (200, {"pid": pid, "inits": 1})


def test_a_worker_stuck_where_the_alarm_cannot_reach_is_killed_and_replaced(one_worker):
    pid = one_worker.post_json("/score", {"data": {}})[1]["pid"]
    with pytest.raises(OSError):  # the connection dies with the worker
        one_worker.post_json("/score", {"data": {"uninterruptible": 30}}, timeout=15)
    one_worker.wait_ready()
    status, body = one_worker.post_json("/score", {"data": {}})
    assert status == 200 and body["pid"] != pid
    metrics = one_worker.request("GET", "/metrics")[2].decode()
    assert "mlportal_worker_kills_total 1" in metrics
    assert "killing it" in one_worker.logs()


def test_run_raising_is_a_500_with_the_message_and_a_logged_traceback(one_worker):
    status, body = one_worker.post_json("/score", {"data": {"raise": "bad day"}})
    assert status == 500
    assert body["error"] == {"code": "run_failed", "message": "run() raised ValueError: the model refused: bad day"}
    assert "Traceback" in one_worker.logs()


def test_a_worker_that_dies_is_started_again(one_worker):
    pid = one_worker.post_json("/score", {"data": {}})[1]["pid"]
    with pytest.raises(OSError):
        one_worker.post_json("/score", {"data": {"exit": True}})
    one_worker.wait_ready()
    assert one_worker.post_json("/score", {"data": {}})[1]["pid"] != pid


def test_two_workers_score_in_parallel(app, start_server):
    server = start_server(app, workers=2)
    results = []

    def call():
        results.append(server.post_json("/score", {"data": {"sleep": 0.8}})[1]["pid"])

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(2)]
    # The second call comes once the first is inside run(): its worker is not in its event loop
    # then, so the other worker must take it (two simultaneous connects may both land on one
    # worker when the machine is too busy to wake the other within its few-millisecond grace).
    threads[0].start()
    time.sleep(0.2)
    threads[1].start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started < 1.5  # one after the other would take 1.8 s
    assert len(set(results)) == 2


def test_probes_answer_while_init_runs(app, start_server):
    server = start_server(app, workers=1, wait=False, INIT_SLEEP="4")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            status = server.request("GET", "/health", timeout=2)[0]
            break
        except OSError:
            time.sleep(0.1)
    assert status == 200
    assert server.request("GET", "/ready")[0] == 503
    assert server.post_json("/score", {"data": {}})[0] == 503
    server.wait_ready()
    assert server.post_json("/score", {"data": {}})[0] == 200


def test_a_failing_init_stops_the_server_with_the_traceback_in_the_log(app, start_server):
    server = start_server(app, workers=2, wait=False, INIT_FAIL="1")
    assert server.proc.wait(timeout=60) == 3
    assert "RuntimeError: model.pkl is missing" in server.logs()


def test_sigterm_stops_master_and_workers_cleanly(app, start_server):
    server = start_server(app, workers=2)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert "stopped" in server.logs()


def test_with_a_stop_drain_it_serves_on_after_sigterm_then_stops(app, start_server):
    """Swarm stops a task as it scales down or rolls, before the gateway dropped it: the task
    serves on for MLPORTAL_STOP_DRAIN_SECONDS, then stops cleanly; a second signal stops it at once."""
    server = start_server(app, workers=1, MLPORTAL_STOP_DRAIN_SECONDS="2")
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.8)
    assert server.post_json("/score", {"data": {}})[0] == 200 and server.proc.poll() is None
    assert server.proc.wait(timeout=15) == 0
    assert time.monotonic() - signalled >= 1.9
    assert "stopping in 2 s" in server.logs()
    again = start_server(app, workers=1, MLPORTAL_STOP_DRAIN_SECONDS="30")
    again.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    again.proc.send_signal(signal.SIGINT)
    assert again.proc.wait(timeout=15) == 0


def test_without_a_schema_run_gets_the_raw_json_text(tmp_path, start_server):
    (tmp_path / "score.py").write_text("def init():\n    pass\n\ndef run(raw):\n    return {'type': type(raw).__name__, 'raw': raw}\n")
    server = start_server(tmp_path, workers=1)
    status, body = server.post_json("/score", {"a": 1})
    assert status == 200 and body == {"type": "str", "raw": '{"a": 1}'}
    assert server.request("POST", "/score", b"{oops")[0] == 400


def test_a_str_that_is_not_json_is_sent_as_a_json_string(tmp_path, start_server):
    (tmp_path / "score.py").write_text("import numpy as np\n\ndef run(raw):\n    return 'plain text' if 'text' in raw else np.array([1.5, 2])\n")
    server = start_server(tmp_path, workers=1)
    assert server.post_json("/score", {"text": 1}) == (200, "plain text")
    assert server.post_json("/score", {"array": 1}) == (200, [1.5, 2.0])
