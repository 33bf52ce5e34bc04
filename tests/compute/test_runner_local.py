"""Runs as a local process in a cached virtualenv (`az ml experiment submit -c local train.py`)."""

import tarfile
import time

import pytest

from compute.runner import RunSpec, run_local
from tests.compute.fixtures import BASE_IMAGE, WHEEL_CACHE, make_snapshot

pytestmark = pytest.mark.docker  # shares the wheel cache with the engine suite


def run(tmp_path, recorder, script: str, **spec_args):
    snapshot = make_snapshot(tmp_path / "snapshot.tar", {"train.py": script, "data/d.csv": "a,b\n"})
    spec = RunSpec(run_id="local", snapshot=snapshot, script="train.py", args=spec_args.pop("args", []),
                   requirements=spec_args.pop("requirements", ["six"]), base_image=BASE_IMAGE, **spec_args)
    return run_local(spec, venv_root=tmp_path.parent / "venvs", wheel_cache=WHEEL_CACHE, on_output=recorder,
                     should_cancel=spec_args.pop("should_cancel", lambda: False), workdir=tmp_path / "work")


def test_a_local_run_completes_and_collects_outputs(tmp_path, recorder, monkeypatch):
    monkeypatch.setenv("MLPORTAL_TEST_SECRET", "do-not-leak")
    script = """
import os, sys, time, six, mlportal_runtime
print("first", sys.argv[1:], open("data/d.csv").read().strip())
time.sleep(1.5)
os.makedirs("outputs", exist_ok=True)
open("outputs/model.pkl", "wb").write(b"m")
print("secret:", os.environ.get("MLPORTAL_TEST_SECRET"), "mine:", os.environ.get("MINE"))
"""
    result = run(tmp_path, recorder, script, args=["-n", "3"], env={"MINE": "yes"})
    assert result.status == "completed" and result.exit_code == 0, recorder.text
    assert recorder.text == ["first ['-n', '3'] a,b", "secret: None mine: yes"]
    assert recorder.at("secret") - recorder.at("first") > 1
    with tarfile.open(result.outputs) as tar:
        assert tar.getnames() == ["model.pkl"]
    assert not [p for p in (tmp_path / "work").iterdir() if p.name != "outputs.tar"]  # scratch removed


def test_a_local_run_over_its_time_limit_is_killed_with_its_children(tmp_path, recorder):
    script = "import subprocess, time\nsubprocess.Popen(['sleep', '60'])\nprint('waiting')\ntime.sleep(60)\n"
    started = time.monotonic()
    result = run(tmp_path, recorder, script, timeout_s=2)
    assert result.status == "timed_out" and result.reason == "over its time limit of 2 s"
    assert time.monotonic() - started < 15


def test_a_local_run_fails_with_its_exit_code(tmp_path, recorder):
    result = run(tmp_path, recorder, "raise SystemExit(4)")
    assert (result.status, result.exit_code, result.reason) == ("failed", 4, "exited with code 4")


def test_a_local_run_over_its_memory_limit_fails_with_oom(tmp_path, recorder):
    result = run(tmp_path, recorder, "data = b'x' * (600 * 1024 * 1024)\n", memory_mb=256)
    assert result.status == "failed" and result.oom is True
    assert result.reason == "out of memory (limit 256 MiB)"


@pytest.fixture
def listener():
    """A TCP server on the host's 127.0.0.1: reachable only from the host's network namespace."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


NETWORK_PROBE = """
import os, socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3).close()
    print("network: open")
except OSError:
    print("network: blocked")
print("cpus:", len(os.sched_getaffinity(0)))
"""


def test_a_local_run_has_no_network_and_its_cpu_share_unless_the_project_allows_network(tmp_path, recorder, listener):
    from compute.runner import network_isolation_prefix

    assert network_isolation_prefix() is not None, "unshare must work on the test machine"
    for name in ("closed", "open"):
        (tmp_path / name).mkdir()
    result = run(tmp_path / "closed", recorder, NETWORK_PROBE, args=[str(listener)], cpus=1.0)
    assert result.status == "completed", recorder.text
    assert recorder.text == ["network: blocked", "cpus: 1"]
    recorder.lines.clear()
    result = run(tmp_path / "open", recorder, NETWORK_PROBE, args=[str(listener)], network=True, cpus=8.0)
    assert result.status == "completed", recorder.text
    assert recorder.text == ["network: open", f"cpus: {min(8, len(__import__('os').sched_getaffinity(0)))}"]


def test_a_local_run_that_needs_isolation_the_worker_cannot_give_fails_before_it_starts(tmp_path, recorder, monkeypatch):
    from compute import runner

    monkeypatch.setattr(runner, "network_isolation_prefix", lambda: None)
    result = run(tmp_path, recorder, "open('started', 'w')\n")
    assert result.status == "failed" and result.exit_code is None
    assert "cannot cut this run off the network" in result.reason and "target docker" in result.reason
