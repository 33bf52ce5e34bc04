"""`experiment submit` and `run …` with the real worker: the folder is uploaded as the snapshot,
the log streams live, the exit code says whether the run completed; then runs are listed, shown,
compared, their outputs downloaded and registered as models. Local target (a virtualenv on the
worker) keeps these quick; the Docker target is driven by tests/e2e/test_lab_terminal.py."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from runs.models import Run
from tests.cli.conftest import assert_one_error_line
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

TRAIN = '''import os, sys
from mlportal_runtime import get_logger

n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 2
for i in range(n):
    print(f"step {i}", flush=True)
    get_logger().log("loss", 1.0 / (i + 1), step=i)
get_logger().log("Accuracy", float(os.environ.get("ACC", "0.875")))
os.makedirs("outputs", exist_ok=True)
with open("outputs/result.txt", "w") as handle:
    handle.write("done\\n")
'''
SLOW = '''import time
print("first line", flush=True)
time.sleep(4)
print("last line", flush=True)
'''


@pytest.fixture
def project_folder(cli, login, owner, workspace, local_runs, celery_worker):
    login(owner)
    outcome = cli("project", "create", "tiny")
    assert outcome.code == 0, outcome.err
    (cli.home / "train.py").write_text(TRAIN)
    (cli.home / "fail.py").write_text('print("about to fail")\nraise SystemExit(3)\n')
    return cli.home


def test_submit_uploads_the_folder_streams_the_log_and_exits_0_when_the_run_completed(cli, project_folder):
    outcome = cli("experiment", "submit", "-c", "local", "train.py", "--n", "3")
    assert outcome.code == 0, outcome.err
    assert [line for line in outcome.out.splitlines() if line.startswith("step")] == ["step 0", "step 1", "step 2"]
    assert "##mlportal" not in outcome.out  # metric lines are stored as metrics, not shown as log
    assert re.search(r"Run tiny #1 completed in [\d.]+s: Accuracy=0\.875, loss=0\.3333\.", outcome.err), outcome.err
    run = Run.objects.get()
    assert (run.script, run.args, run.target, run.status) == ("train.py", ["--n", "3"], "local", "completed")

    shown = json.loads(cli("run", "show", "last", "-o", "json").out)
    assert shown["metrics"]["Accuracy"] == 0.875 and shown["outputs"] == [{"path": "result.txt", "size": 5}]
    assert json.loads(cli("history", "info", "-r", "1", "-o", "json", "--query", "id").out) == str(run.pk)
    assert json.loads(cli("history", "last", "-o", "json", "--query", "status").out) == "completed"
    assert "step 2" in cli("run", "logs", "tiny#1").out
    listed = cli("run", "list")
    assert listed.out.splitlines()[0].split()[:3] == ["ID", "Run", "Script"]
    assert "tiny #1" in listed.out and "Accuracy=0.875" in listed.out


def test_run_download_puts_one_output_in_the_project_folder_or_all_under_outputs(cli, project_folder):
    assert cli("experiment", "submit", "-c", "local", "train.py").code == 0
    (project_folder / "sub").mkdir()
    one = cli("run", "download", "last", "--path", "outputs/result.txt", cwd=project_folder / "sub")
    assert one.code == 0, one.err
    assert (project_folder / "result.txt").read_text() == "done\n"  # the lab: into the project's root folder
    every = cli("run", "download", "1", "-d", project_folder / "dl", "-o", "json")
    assert json.loads(every.out)[0]["path"] == "outputs/result.txt"
    assert (project_folder / "dl" / "outputs" / "result.txt").read_text() == "done\n"
    assert_one_error_line(cli("run", "download", "last", "--path", "outputs/nothing.txt"), contains="has no output")


def test_the_snapshot_is_the_folder_as_it_is_at_submit_time(cli, project_folder):
    (project_folder / "train.py").write_text(TRAIN.replace('"0.875"', '"0.5"'))
    assert cli("experiment", "submit", "-c", "local", "train.py").code == 0
    assert json.loads(cli("run", "show", "last", "-o", "json", "--query", "metrics.Accuracy").out) == 0.5


def test_a_failing_run_exits_non_zero_with_one_line_saying_why(cli, project_folder):
    outcome = cli("experiment", "submit", "-c", "local", "fail.py")
    assert "about to fail" in outcome.out
    assert_one_error_line(outcome, contains="error: run tiny #1 failed")
    assert "3" in outcome.err_lines[-1]


def test_an_unknown_script_is_refused_by_the_portal_in_one_line(cli, project_folder):
    assert_one_error_line(cli("experiment", "submit", "-c", "local", "nosuch.py"), contains="nosuch.py")
    assert not Run.objects.exists()


def test_no_wait_prints_the_run_id_at_once_and_logs_f_follows_it(cli, project_folder):
    outcome = cli("experiment", "submit", "-c", "local", "--no-wait", "train.py")
    assert outcome.code == 0
    run_id = outcome.out.strip()
    assert str(Run.objects.get().pk) == run_id
    followed = cli("run", "logs", run_id, "-f")
    assert followed.code == 0 and "step 1" in followed.out


def test_run_compare_shows_metrics_side_by_side(cli, project_folder, monkeypatch):
    cli("experiment", "submit", "-c", "local", "train.py")
    (project_folder / "train.py").write_text(TRAIN.replace('"0.875"', '"0.75"'))
    cli("experiment", "submit", "-c", "local", "train.py")
    table = cli("run", "compare", "1", "2").out.splitlines()
    assert table[0].split() == ["tiny", "#1", "tiny", "#2", "Differs"]
    accuracy = next(line for line in table if line.startswith("metric: Accuracy"))
    assert accuracy.split()[2:] == ["0.875", "0.75", "*"]
    data = json.loads(cli("run", "compare", "1", "2", "-o", "json").out)
    assert [m["values"] for m in data["metrics"] if m["name"] == "Accuracy"] == [[0.875, 0.75]]


def test_a_runs_output_registers_as_a_model_with_its_lineage(cli, project_folder):
    cli("experiment", "submit", "-c", "local", "train.py")
    outcome = cli("model", "register", "--run", "last", "--path", "outputs/result.txt", "-n", "result.txt", "-o", "json")
    assert outcome.code == 0, outcome.err
    model = json.loads(outcome.out)
    assert (model["ref"], model["run"]) == ("result.txt:1", str(Run.objects.get().pk))


def test_the_log_streams_while_the_run_is_still_running(cli, project_folder, portal):
    """A real `mlportal` process: the first line is printed seconds before the run ends."""
    # Long enough that the interrupt lands while the run is still going, even when a loaded
    # machine delivers the first log line late (4 s of sleep left too little room in CI).
    (project_folder / "slow.py").write_text(SLOW.replace("time.sleep(4)", "time.sleep(15)"))
    env = {**os.environ, "MLPORTAL_CONFIG": str(cli.config), "PYTHONUNBUFFERED": "1"}
    # The CLI as a terminal starts it: SIGINT at its default, even when this suite runs in the
    # background of a script, where SIGINT is ignored and children inherit that.
    proc = subprocess.Popen([sys.executable, "-m", "mlportal_cli", "experiment", "submit", "-c", "local", "slow.py"],
                            cwd=project_folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = {}
        for line in proc.stdout:
            seen.setdefault(line.strip(), time.monotonic())
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen["last line"] - seen["first line"] > 2.5


def test_run_cancel_stops_a_running_run_and_following_it_then_fails(cli, project_folder):
    (project_folder / "slow.py").write_text(SLOW.replace("time.sleep(4)", "time.sleep(60)"))
    run_id = cli("experiment", "submit", "-c", "local", "--no-wait", "slow.py").out.strip()
    wait_until(lambda: "first line" in cli("run", "logs", run_id).out, timeout=60, message="the run to start")
    canceled = cli("run", "cancel", "last", "-o", "json", "--query", "status")
    assert canceled.code == 0, canceled.err
    assert json.loads(canceled.out) in ("canceled", "running")  # the worker stops it within a moment
    assert_one_error_line(cli("run", "logs", run_id, "-f"), contains="error: run tiny #1 canceled")
    assert cli("history", "list", "-o", "tsv", "--query", "[].status").out == "canceled\n"


def test_ctrl_c_while_following_a_run_exits_130_quietly_and_the_run_goes_on(cli, project_folder):
    # Long enough that the interrupt lands while the run is still going, even when a loaded
    # machine delivers the first log line late (4 s of sleep left too little room in CI).
    (project_folder / "slow.py").write_text(SLOW.replace("time.sleep(4)", "time.sleep(15)"))
    env = {**os.environ, "MLPORTAL_CONFIG": str(cli.config), "PYTHONUNBUFFERED": "1"}
    # The CLI as a terminal starts it: SIGINT at its default, even when this suite runs in the
    # background of a script, where SIGINT is ignored and children inherit that.
    proc = subprocess.Popen([sys.executable, "-m", "mlportal_cli", "experiment", "submit", "-c", "local", "slow.py"],
                            cwd=project_folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:  # the portal's header line, then the script's
            if line.strip() == "first line":
                break
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert code == 130, stderr
    assert "Traceback" not in stderr
    wait_until(lambda: Run.objects.get().status == "completed", timeout=90, message="the run to complete anyway")
