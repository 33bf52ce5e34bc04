"""MLflow client code inside runs: a script that `import mlflow` and calls start_run, log_metric(s),
log_param(s), set_tag(s) and log_artifact logs into its portal run with no network, through the shim
the runtime folder appends after site-packages; a real MLflow (in the run's environment, or the
portal's own .venv) is never shadowed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compute.envimage import runtime_package_dirs, runtime_site_file
from mlportal_runtime import parse_line

SCRIPT = r'''
import os, mlflow
from mlflow.exceptions import MlflowException
mlflow.set_experiment("churn")
with mlflow.start_run(run_name="baseline", tags={"team": "churn"}, description="first try") as run:
    assert run.info.run_id == os.environ["MLPORTAL_RUN_ID"]
    mlflow.log_param("max_depth", 4)
    mlflow.log_params({"criterion": "gini", "lr": 0.1})
    mlflow.log_param("max_depth", 4)  # the same value again is fine, as in MLflow
    try:
        mlflow.log_param("max_depth", 5)
    except MlflowException as exc:
        print("refused:", exc)
    mlflow.log_metric("DTree Accuracy", 0.93)
    mlflow.log_metric("diverged", float("nan"), step=9)  # kept as MLflow keeps it, not skipped
    for step in range(3):
        mlflow.log_metrics({"loss": 1.0 / (step + 1), "val_loss": 2.0 / (step + 1)}, step=step)
    mlflow.set_tags({"stage": "dev"})
    with open("model.txt", "w") as f:
        f.write("model")
    mlflow.log_artifact("model.txt")
    mlflow.log_artifact("model.txt", artifact_path="nested/dir")
    mlflow.log_dict({"a": 1}, "meta/info.json")
print("mlflow from", mlflow.__file__)
'''


def _runtime_lib(tmp_path: Path) -> Path:
    """The runtime folder as a run gets it (what compute copies into images and local runs)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for root in runtime_package_dirs():
        shutil.copytree(root, lib / root.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(runtime_site_file(), lib / "sitecustomize.py")
    return lib


def _bare_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


def _run(python: Path, lib: Path, cwd: Path, script: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib), "MLPORTAL_RUN_ID": "run-42", "HOME": str(cwd)}
    return subprocess.run([str(python), "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_mlflow_calls_become_the_runs_metrics_params_tags_and_outputs(tmp_path):
    lib, venv = _runtime_lib(tmp_path), _bare_venv(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    done = _run(venv / "bin" / "python", lib, work, SCRIPT)
    assert done.returncode == 0, done.stderr
    parsed = [p for p in map(parse_line, done.stdout.splitlines()) if p]
    params = {d["name"]: d["value"] for kind, d in parsed if kind == "param"}
    tags = {d["key"]: d["value"] for kind, d in parsed if kind == "tag"}
    metrics = [(d["name"], d["value"], d["step"]) for kind, d in parsed if kind == "metric"]
    metrics += [(p["name"], p["value"], p["step"]) for kind, d in parsed if kind == "metrics" for p in d]
    assert params == {"max_depth": "4", "criterion": "gini", "lr": "0.1"}
    assert tags == {"mlflow.experimentName": "churn", "mlflow.runName": "baseline", "team": "churn",
                    "mlflow.note.content": "first try", "stage": "dev"}
    assert ("DTree Accuracy", 0.93, None) in metrics and ("val_loss", 1.0, 1) in metrics and len(metrics) == 8
    assert [(n, s) for n, v, s in metrics if v != v] == [("diverged", 9)] and "not logged" not in done.stderr
    assert "refused: Changing param values is not allowed" in done.stdout and "'4'" in done.stdout
    assert (work / "outputs/model.txt").read_text() == "model" and (work / "outputs/nested/dir/model.txt").exists()
    assert json.loads((work / "outputs/meta/info.json").read_text()) == {"a": 1}
    assert f"mlflow from {lib}/mlportal_runtime/mlflow_shim/mlflow/__init__.py" in done.stdout


def test_a_real_mlflow_in_the_runs_environment_wins_over_the_shim(tmp_path):
    lib, venv = _runtime_lib(tmp_path), _bare_venv(tmp_path)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "mlflow").mkdir()
    (site / "mlflow" / "__init__.py").write_text("REAL = True\n")
    done = _run(venv / "bin" / "python", lib, tmp_path, "import mlflow, sys; print(mlflow.REAL, mlflow.__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True ") and str(site) in done.stdout


def test_the_portals_own_venv_imports_the_real_mlflow_client():
    done = subprocess.run([sys.executable, "-c", "import mlflow; print(mlflow.__file__, hasattr(mlflow, '_PORTAL'))"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    path, shim = done.stdout.split()
    assert "site-packages" in path and "mlflow_shim" not in path and shim == "False"
