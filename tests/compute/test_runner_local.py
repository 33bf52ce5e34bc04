"""Runs as a local process in a cached virtualenv (`az ml experiment submit -c local train.py`), as
an unprivileged user that can read none of the portal's files and reach none of its sockets."""

import os
import sys
import tarfile
import time

import pytest

from compute.runner import LocalSandbox, RunSpec, python_for_user, run_local
from tests.compute.fixtures import BASE_IMAGE, WHEEL_CACHE, make_snapshot
from tests.conftest import LOCAL_RUN_ROOT

pytestmark = pytest.mark.docker  # shares the wheel cache with the engine suite

RUN_UID = 61234


def sandbox() -> LocalSandbox:
    python = python_for_user(RUN_UID, [getattr(sys, "_base_executable", ""), "/usr/local/bin/python3", "/usr/bin/python3"])
    assert python, "no interpreter the run user may execute on this machine"
    return LocalSandbox(uid=RUN_UID, root=LOCAL_RUN_ROOT, python=python)


def run(tmp_path, recorder, script: str, **spec_args):
    snapshot = make_snapshot(tmp_path / "snapshot.tar", {"train.py": script, "data/d.csv": "a,b\n"})
    should_cancel = spec_args.pop("should_cancel", lambda: False)
    spec = RunSpec(run_id="local", snapshot=snapshot, script="train.py", args=spec_args.pop("args", []),
                   requirements=spec_args.pop("requirements", ["six"]), base_image=BASE_IMAGE, **spec_args)
    return run_local(spec, sandbox=sandbox(), wheel_cache=WHEEL_CACHE, on_output=recorder,
                     should_cancel=should_cancel, workdir=tmp_path / "work")


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
    from compute.runner import isolation_prefix

    assert isolation_prefix() is not None, "unshare must work on the test machine (as root)"
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

    monkeypatch.setattr(runner, "isolation_prefix", lambda: None)
    result = run(tmp_path, recorder, "open('started', 'w')\n")
    assert result.status == "failed" and result.exit_code is None
    assert "cannot isolate local runs" in result.reason and "target docker" in result.reason


PROBE = """
import os, socket, sys
print("uid", os.getuid(), os.geteuid(), os.getgroups())
for name in sys.argv[1:]:
    try:
        if name.endswith(".sock"):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(name)
                s.sendall(b"GET /_ping HTTP/1.0\\r\\n\\r\\n")
                print("REACHED", name, s.recv(100))
        elif os.path.isdir(name):
            print("LISTED", name, os.listdir(name)[:3])
        else:
            print("READ", name, open(name, "rb").read(20))
    except OSError as exc:
        print("refused", name, type(exc).__name__)
print("env", sorted(k for k in os.environ if k not in {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONUNBUFFERED"}))
"""


def test_a_local_run_cannot_read_the_portals_files_or_reach_the_docker_socket(tmp_path, recorder, monkeypatch, settings):
    from pathlib import Path

    assert os.geteuid() == 0, "this test proves the privilege drop: the worker must run as root (as CI does)"
    data = Path(settings.DATA_DIR)
    assert (data / "secret_key").exists() and oct(data.stat().st_mode & 0o777) == "0o700"
    (data / "admin-password.txt").write_text("the admin password") if not (data / "admin-password.txt").exists() else None
    config = Path.home() / ".config" / "mlportal"
    config.mkdir(parents=True, exist_ok=True)
    (config / "probe-config.json").write_text('{"token": "mlp_secret"}')
    monkeypatch.setenv("SECRET_KEY", "must-not-reach-the-run")
    targets = [str(data / "secret_key"), str(data / "admin-password.txt"), str(data), str(data / "db.sqlite3"),
               str(config / "probe-config.json"), str(Path.home()), "/var/run/docker.sock", "/run/docker.sock",
               "/run/postgresql/.s.PGSQL.5432", "/etc/shadow"]
    try:
        result = run(tmp_path, recorder, PROBE, args=targets)
    finally:
        (config / "probe-config.json").unlink()
    assert result.status == "completed", recorder.text
    assert recorder.text[0] == f"uid {RUN_UID} {RUN_UID} []"
    assert not [line for line in recorder.text if line.startswith(("READ", "LISTED", "REACHED"))], recorder.text
    assert len([line for line in recorder.text if line.startswith("refused")]) == len(targets)
    assert recorder.text[-1] == "env []"


def test_a_local_run_cannot_leave_its_own_working_copy_for_another_runs(tmp_path, recorder):
    script = ("import os, pathlib\n"
              "here = pathlib.Path.cwd().parent\n"
              "others = [p for p in here.parent.iterdir() if p != here] if os.access(here.parent, os.R_OK) else 'unlistable'\n"
              "print('others', others)\n"
              "print('mode', oct(here.stat().st_mode & 0o777))\n")
    result = run(tmp_path, recorder, script)
    assert result.status == "completed", recorder.text
    assert recorder.text == ["others unlistable", "mode 0o700"]
