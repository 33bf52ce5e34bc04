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
