"""Runs in a fresh container (`az ml experiment submit -c docker train.py`)."""

import os
import tarfile
import time

import pytest

from compute.engine import EngineError
from compute.runner import RunSpec, list_containers, run_in_docker
from tests.compute.fixtures import BASE_IMAGE, SMALL_REQUIREMENTS, WHEEL_CACHE, make_snapshot

pytestmark = pytest.mark.docker


def run(tmp_path, recorder, script: str, *, run_id: str = "t", should_cancel=lambda: False,
        containers: list | None = None, base_url=None, **spec_args):
    snapshot = make_snapshot(tmp_path / "snapshot.tar", {"train.py": script, "data/d.csv": "a,b\n1,2\n"})
    spec_args.setdefault("requirements", SMALL_REQUIREMENTS)
    spec = RunSpec(run_id=f"test-{run_id}-{os.getpid()}", snapshot=snapshot, script="train.py",
                   args=spec_args.pop("args", []), base_image=BASE_IMAGE, **spec_args)
    seen = containers if containers is not None else []
    result = run_in_docker(spec, wheel_cache=WHEEL_CACHE, on_output=recorder, should_cancel=should_cancel,
                           on_container=seen.append, workdir=tmp_path / "work", base_url=base_url)
    assert not [c for c in list_containers("run") if c["labels"].get("mlportal.id") == spec.run_id]
    return result


def test_a_run_streams_lines_before_it_ends_and_brings_outputs_back(tmp_path, recorder, small_env):
    script = """
import os, sys, time
print("first", sys.argv[1:], os.getuid(), open("data/d.csv").read().split()[0])
time.sleep(2)
os.makedirs("outputs/plots", exist_ok=True)
open("outputs/model.pkl", "wb").write(b"model")
open("outputs/plots/roc.txt", "w").write("roc")
sys.stderr.write("warning on stderr\\n")
print("last line without newline", end="")
"""
    containers: list[str] = []
    result = run(tmp_path, recorder, script, run_id="stream", args=["--alpha", "0.5"], containers=containers)
    assert result.status == "completed" and result.exit_code == 0 and result.reason == ""
    assert result.image == small_env["tag"]
    assert recorder.text[0] == "first ['--alpha', '0.5'] 1000 a,b"
    assert "warning on stderr" in recorder.text and "last line without newline" in recorder.text
    assert recorder.at("last line") - recorder.at("first") > 1.5  # delivered as it came
    with tarfile.open(result.outputs) as tar:
        assert sorted(m.name for m in tar.getmembers() if m.isfile()) == ["model.pkl", "plots/roc.txt"]
        assert tar.extractfile("model.pkl").read() == b"model"
    assert len(containers) == 1


def test_a_run_without_outputs_has_none(tmp_path, recorder, small_env):
    result = run(tmp_path, recorder, "print('nothing written')", run_id="noout")
    assert result.status == "completed" and result.outputs is None


def test_a_non_zero_exit_fails_with_the_code_and_keeps_the_output(tmp_path, recorder, small_env):
    script = "import sys, os\nos.makedirs('outputs', exist_ok=True)\nopen('outputs/partial.txt','w').write('p')\nprint('before failing')\nsys.exit(3)\n"
    result = run(tmp_path, recorder, script, run_id="exit3")
    assert (result.status, result.exit_code, result.reason, result.oom) == ("failed", 3, "exited with code 3", False)
    assert "before failing" in recorder.text
    assert result.outputs is not None


def test_running_out_of_memory_fails_with_oom(tmp_path, recorder, small_env):
    script = "print('allocating', flush=True)\ndata = b'x' * (300 * 1024 * 1024)\nprint('survived')\n"
    result = run(tmp_path, recorder, script, run_id="oom", memory_mb=128)
    assert result.status == "failed" and result.oom is True and result.exit_code == 137
    assert result.reason == "out of memory (limit 128 MiB)"
    assert "survived" not in recorder.text


def test_a_run_over_its_time_limit_is_killed(tmp_path, recorder, small_env):
    started = time.monotonic()
    result = run(tmp_path, recorder, "import time\nprint('sleeping')\ntime.sleep(60)\n", run_id="timeout", timeout_s=2)
    assert result.status == "timed_out" and result.reason == "over its time limit of 2 s"
    assert time.monotonic() - started < 20


def test_a_canceled_run_is_killed_within_a_second_or_so(tmp_path, recorder, small_env):
    def should_cancel():
        return any("started" in line for _, line in recorder.lines)

    result = run(tmp_path, recorder, "import time\nprint('started')\ntime.sleep(60)\n", run_id="cancel",
                 should_cancel=should_cancel)
    assert result.status == "canceled" and result.reason == "canceled"
    assert time.monotonic() - recorder.at("started") < 5


def test_a_run_has_no_network_and_only_its_own_environment(tmp_path, recorder, small_env, monkeypatch):
    monkeypatch.setenv("MLPORTAL_TEST_SECRET", "do-not-leak")
    script = """
import os, socket
try:
    socket.create_connection(("1.1.1.1", 53), timeout=3)
    print("network: open")
except OSError as exc:
    print("network: blocked")
print("secret:", os.environ.get("MLPORTAL_TEST_SECRET"), "mine:", os.environ.get("MINE"))
print("user:", os.getuid())
"""
    result = run(tmp_path, recorder, script, run_id="net", env={"MINE": "yes"})
    assert result.status == "completed"
    assert recorder.text == ["network: blocked", "secret: None mine: yes", "user: 1000"]


def test_the_container_is_removed_even_when_the_caller_fails(tmp_path, recorder, small_env):
    containers: list[str] = []

    def broken_output(line: str) -> None:
        if not line.startswith("[prepare]"):
            raise RuntimeError("the log store is down")

    snapshot = make_snapshot(tmp_path / "s.tar", {"train.py": "print('hello')"})
    spec = RunSpec(run_id=f"test-broken-{os.getpid()}", snapshot=snapshot, script="train.py", args=[],
                   requirements=SMALL_REQUIREMENTS, base_image=BASE_IMAGE)
    with pytest.raises(RuntimeError):
        run_in_docker(spec, wheel_cache=WHEEL_CACHE, on_output=broken_output, should_cancel=lambda: False,
                      on_container=containers.append, workdir=tmp_path / "w")
    assert containers and not [c for c in list_containers("run") if c["id"] == containers[0]]


def test_a_requirement_pip_cannot_find_fails_the_run_with_pips_message(tmp_path, recorder, docker_engine):
    result = run(tmp_path, recorder, "print('never')", run_id="badreq",
                 requirements=["mlportal-no-such-package-xyz==1.0"])
    assert result.status == "failed" and result.exit_code is None
    assert "environment preparation failed" in result.reason and "mlportal-no-such-package-xyz" in result.reason


def test_an_unreachable_engine_raises_engine_error(tmp_path, recorder):
    with pytest.raises(EngineError, match="Docker engine unreachable at tcp://127.0.0.1:1"):
        run(tmp_path, recorder, "print('never')", run_id="noengine", base_url="tcp://127.0.0.1:1")
