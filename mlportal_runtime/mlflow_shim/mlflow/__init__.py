"""MLflow's fluent tracking API inside an MLPortal run, with no network and no tracking server.

Metrics, params and tags become the runtime's structured stdout lines (``mlportal_runtime.logger``),
which the worker stores on the run; artifacts are copied under ``outputs/``, which the worker keeps
as the run's outputs. The run is the portal's run: ``start_run`` hands back its id, nested runs log
into it too. MLflow's rules hold: a param keeps its value (MlflowException otherwise), names and
values have MLflow's size limits. A NaN or infinite metric is reported on stderr and skipped.

Only present when the run's environment has no real MLflow (see ../README.md).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlportal_runtime.logger import DuplicateParam, get_logger

__version__ = "3.0.0+mlportal.shim"
OUTPUTS = "outputs"
_PORTAL = True  # lets code (and tests) tell the shim from the real client


class RunInfo:
    def __init__(self, run_id: str, run_name: str, experiment_id: str):
        self.run_id = run_id
        self.run_uuid = run_id
        self.run_name = run_name
        self.experiment_id = experiment_id
        self.status = "RUNNING"
        self.start_time = int(time.time() * 1000)
        self.end_time = None
        self.artifact_uri = os.path.abspath(OUTPUTS)
        self.lifecycle_stage = "active"


class RunData:
    def __init__(self):
        self.metrics: dict[str, float] = {}
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}


class ActiveRun:
    """What ``start_run`` returns; a context manager that ends the run (as MLflow's does)."""

    def __init__(self, info: RunInfo):
        self.info = info
        self.data = RunData()

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        end_run("FAILED" if exc_type else "FINISHED")
        return False


class Experiment:
    def __init__(self, name: str):
        self.name = name
        self.experiment_id = os.environ.get("MLPORTAL_PROJECT_ID", "0")
        self.lifecycle_stage = "active"


_stack: list[ActiveRun] = []
_tracking_uri = "mlportal://run"


def _run_id() -> str:
    return os.environ.get("MLPORTAL_RUN_ID", "local")


def start_run(run_id: str | None = None, experiment_id: str | None = None, run_name: str | None = None,
              nested: bool = False, tags: dict | None = None, description: str | None = None, **_: Any) -> ActiveRun:
    """Returns the portal run (already started by the portal); ``tags`` and ``description`` are set on it."""
    if _stack and not nested:
        raise MlflowException(f"Run with UUID {_stack[-1].info.run_id} is already active. To start a nested run, "
                              "call start_run with nested=True")
    run = ActiveRun(RunInfo(_run_id(), run_name or os.environ.get("MLPORTAL_RUN_NUMBER", ""), experiment_id or "0"))
    _stack.append(run)
    if run_name:
        set_tag("mlflow.runName", run_name)
    if tags:
        set_tags(tags)
    if description:
        set_tag("mlflow.note.content", description)
    return run


def end_run(status: str = "FINISHED") -> None:
    if _stack:
        run = _stack.pop()
        run.info.status = status
        run.info.end_time = int(time.time() * 1000)


def active_run() -> ActiveRun | None:
    return _stack[-1] if _stack else None


def last_active_run() -> ActiveRun | None:
    return active_run()


def _ensure_run() -> ActiveRun:
    # MLflow starts a run on the first log call; here the portal's run is always there.
    return _stack[-1] if _stack else start_run()


def log_metric(key: str, value: Any, step: int | None = None, timestamp: int | None = None, **_: Any) -> None:
    run = _ensure_run()
    try:
        get_logger().log(key, value, step=step)
    except (TypeError, ValueError) as exc:
        raise MlflowException(str(exc)) from None
    if isinstance(value, (int, float)):
        run.data.metrics[key] = value


def log_metrics(metrics: dict, step: int | None = None, timestamp: int | None = None, **_: Any) -> None:
    run = _ensure_run()
    try:
        get_logger().log_metrics(metrics, step=step)  # one line for them all
    except (TypeError, ValueError) as exc:
        raise MlflowException(str(exc)) from None
    run.data.metrics.update({k: v for k, v in dict(metrics).items() if isinstance(v, (int, float))})


def log_param(key: str, value: Any, synchronous: bool | None = None) -> Any:
    run = _ensure_run()
    try:
        get_logger().log_param(key, value)
    except DuplicateParam as exc:
        raise MlflowException(f"Changing param values is not allowed. {exc}") from None
    except ValueError as exc:
        raise MlflowException(str(exc)) from None
    run.data.params[key] = str(value)
    return value


def log_params(params: dict, synchronous: bool | None = None, **_: Any) -> None:
    for key, value in dict(params).items():
        log_param(key, value)


def set_tag(key: str, value: Any, synchronous: bool | None = None) -> None:
    run = _ensure_run()
    try:
        get_logger().set_tag(key, value)
    except ValueError as exc:
        raise MlflowException(str(exc)) from None
    run.data.tags[key] = str(value)


def set_tags(tags: dict, synchronous: bool | None = None) -> None:
    for key, value in dict(tags).items():
        set_tag(key, value)


def _artifact_dir(artifact_path: str | None) -> Path:
    target = Path(OUTPUTS)
    if artifact_path:
        rel = Path(artifact_path)
        if rel.is_absolute() or ".." in rel.parts:
            raise MlflowException(f"artifact_path {artifact_path!r} must be a relative path inside the run's outputs")
        target = target / rel
    target.mkdir(parents=True, exist_ok=True)
    return target


def log_artifact(local_path: str, artifact_path: str | None = None, **_: Any) -> None:
    """Copies a file (or a folder) into ``outputs/[artifact_path/]``: the run's outputs."""
    _ensure_run()
    source = Path(local_path)
    if not source.exists():
        raise MlflowException(f"No such file or directory: {local_path!r}")
    target = _artifact_dir(artifact_path) / source.name
    if source.resolve() == target.resolve():
        return
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copyfile(source, target)


def log_artifacts(local_dir: str, artifact_path: str | None = None, **_: Any) -> None:
    _ensure_run()
    source = Path(local_dir)
    if not source.is_dir():
        raise MlflowException(f"No such directory: {local_dir!r}")
    shutil.copytree(source, _artifact_dir(artifact_path), dirs_exist_ok=True)


def log_text(text: str, artifact_file: str) -> None:
    path = Path(artifact_file)
    target = _artifact_dir(str(path.parent) if str(path.parent) != "." else None) / path.name
    target.write_text(text)


def log_dict(dictionary: Any, artifact_file: str) -> None:
    log_text(json.dumps(dictionary, indent=2), artifact_file)


def set_experiment(experiment_name: str | None = None, experiment_id: str | None = None) -> Experiment:
    """The run's project is its experiment; the name is accepted and kept as a tag."""
    if experiment_name:  # MLflow starts no run here; the tag goes straight onto the portal's run
        get_logger().set_tag("mlflow.experimentName", experiment_name)
    return Experiment(experiment_name or "")


def get_experiment_by_name(name: str) -> Experiment:
    return Experiment(name)


def set_tracking_uri(uri: str) -> None:
    global _tracking_uri
    _tracking_uri = str(uri)


def get_tracking_uri() -> str:
    return _tracking_uri


def get_artifact_uri(artifact_path: str | None = None) -> str:
    base = os.path.abspath(OUTPUTS)
    return os.path.join(base, artifact_path) if artifact_path else base


def autolog(*args: Any, **kwargs: Any) -> None:
    print("mlportal: mlflow.autolog() is not supported inside portal runs; log with mlflow.log_* calls",
          file=sys.stderr, flush=True)


__all__ = ["ActiveRun", "MlflowException", "active_run", "autolog", "end_run", "get_artifact_uri",
           "get_experiment_by_name", "get_tracking_uri", "last_active_run", "log_artifact", "log_artifacts", "log_dict",
           "log_metric", "log_metrics", "log_param", "log_params", "log_text", "set_experiment", "set_tag", "set_tags",
           "set_tracking_uri", "start_run"]
