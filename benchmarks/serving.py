"""Serving benchmark: MLPortal's service container against ``mlflow models serve``, MLServer and BentoML.

    .venv/bin/python benchmarks/serving.py [--seconds 3] [--repeats 4] [--workers 2] [--cases light,churn]
                                           [--peers mlflow,mlserver,bentoml]

Two cases, each served by every server with the same model pickle, the same worker count and
the same single core (core 0; wrk runs on core 1), single-record requests over keep-alive
connections, at 1 and 16 connections:

* light: a DecisionTreeClassifier on the 4 numeric iris columns; ``run()`` only predicts;
* churn: the churn template's pipeline (trained by the template's own script in a temporary
  copy) with its ``score.py`` and a ``service_schema.json`` made by ``churn_schema_gen.py``.

MLPortal: the image ``compute.images.build_service_image`` builds on the environment image,
started with ``compute.containers.start_service_container`` (port published on 127.0.0.1),
measured at the container's own address (``ours``: reached as every peer is, at the server's
own socket) and through the published port (``ours_published``: while the engine runs its
userland proxy, the default, every connection to 127.0.0.1 passes ``docker-proxy``, one more
process and one more copy of each byte, whose scheduling shows in the tail at one connection).
The peers, each in its own venv under ``~/.cache/mlportal/bench-venvs/<peer>`` with the same
numpy/pandas/scikit-learn, pinned (PEER_PACKAGES), installed from PyPI on first use:

* MLflow 3.17: a pyfunc whose ``load_context`` calls the same ``init()`` and whose ``predict``
  calls the same ``run()``, with a signature inferred from the same record (MLflow's
  counterpart of the service schema), served with ``--env-manager local -w N``, with the
  TCP_NODELAY its uvicorn loses under ``-w > 1`` restored (see NODELAY_PATCH);
* MLServer 1.7.1 with its scikit-learn runtime (``mlserver_sklearn.SKLearnModel``) on the same
  model.pkl: its predict is what both ``run()`` do, ``model.predict`` on the DataFrame the
  pandas codec decodes from an OIP v2 request (one tensor per column); ``parallel_workers`` N;
* BentoML 1.4.40: a service whose constructor calls the same ``init()`` and whose API calls the
  same ``run()`` on a DataFrame of the posted records, ``workers`` N.

Every server logs each request, as it does by default.

The floor is the same ``run()`` called in-process (pinned to core 0) on an input prepared once.
Overhead is what a server adds above it: at 1 connection the median latency minus the floor;
at 16 (the server core saturated) the core time per request, 1/throughput, minus the floor.
All servers run side by side (the others idle while wrk loads one) and wrk goes round them, so
all meet the same background load of this shared machine; each figure is its best over
``--repeats`` runs (others' work only ever slows a run down): highest throughput, lowest latencies.

Prints a table, then the goal checks (issue 5's against MLflow, issue 13's against the best
peer: figure by figure, the highest throughput and the lowest p99 and overhead of the three),
and ends with one line per case, peer (and ``best``) and connection count:
``light best c=16 throughput_ratio=3.4 p99_ratio=0.21 overhead_ratio=0.12`` (ours / theirs).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

VENVS = Path(os.environ.get("MLPORTAL_BENCH_VENVS", "~/.cache/mlportal/bench-venvs")).expanduser()
MLFLOW_VERSION = "3.17.*"
MLFLOW_VENV = VENVS / "mlflow"
# Each peer in its own venv, pinned like MLflow (plus this venv's numpy/pandas/scikit-learn).
# uvloop 0.22 made asyncio.get_event_loop() raise outside a running loop, which kills every
# MLServer 1.7.1 inference worker at start: the pin keeps the last uvloop it works with.
PEER_PACKAGES = {
    "mlflow": (f"mlflow=={MLFLOW_VERSION}",),
    "mlserver": ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22"),
    "bentoml": ("bentoml==1.4.40",),
}
PEER_DISTRIBUTION = {"mlflow": "mlflow", "mlserver": "mlserver", "bentoml": "bentoml"}
PEERS = tuple(PEER_PACKAGES)
PEER_TITLES = {"mlflow": "MLflow", "mlserver": "MLServer", "bentoml": "BentoML", "best": "best peer"}
CONNECTIONS = (1, 16)
# Our server reached other ways than ``ours`` (the container at its own address, as each peer is
# reached at its own socket): rows of their own, goal lines and ratio lines against the best peer.
VARIANTS = {"ours_published": "through the published port", "ours_host": "as a host process"}
CASES = ("light", "churn")

# Goals per case and peer ("best": the best of the three at each figure, the highest throughput
# and the lowest p99 and overhead, each maybe from another peer): (op, bound) per ratio.
# Issue 5's goals against MLflow stay; issue 13's are against the best peer.
GOALS = {
    "light": {
        "mlflow": {"throughput_ratio": (">=", 3.0), "p99_ratio": ("<=", 1 / 3), "overhead_ratio": ("<=", 0.2)},
        "best": {"throughput_ratio": (">=", 2.0), "p99_ratio": ("<=", 0.5)},
    },
    "churn": {
        "mlflow": {"throughput_ratio": (">=", 1.5), "overhead_ratio": ("<=", 0.2)},
        "best": {"throughput_ratio": (">=", 1.5)},
    },
}

# The MLflow side: "models from code", so the wrapper is imported, not unpickled.
MLFLOW_WRAPPER = '''\
"""An MLflow pyfunc around a score.py: load_context calls init(), predict calls run()."""

import importlib.util
import inspect
import os
import sys

import mlflow
from mlflow.pyfunc import PythonModel


class ScorePy(PythonModel):
    def load_context(self, context):
        app = context.artifacts["app"]
        os.chdir(app)  # score.py loads model.pkl from the working directory, as in our image
        sys.path.insert(0, app)
        spec = importlib.util.spec_from_file_location("score", os.path.join(app, "score.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["score"] = module
        spec.loader.exec_module(module)
        module.init()
        self._run = module.run
        self._arg = next(iter(inspect.signature(module.run).parameters))

    def predict(self, context, model_input, params=None):
        return self._run(**{self._arg: model_input})


mlflow.models.set_model(ScorePy())
'''

MLFLOW_SAVE = '''\
import json, sys
import pandas as pd
import mlflow
from mlflow.models import infer_signature

app_dir, model_dir, wrapper, sample_file = sys.argv[1:]
with open(sample_file) as handle:
    sample = pd.DataFrame(json.load(handle))
mlflow.pyfunc.save_model(model_dir, python_model=wrapper, artifacts={"app": app_dir},
                         signature=infer_signature(sample), input_example=None)
'''


PREPARE = common.PREPARE

# The BentoML side: a service whose constructor calls the same init() and whose one API calls
# the same run() on a DataFrame of the posted records (as MLflow's pyfunc gets them).
BENTO_SERVICE = '''\
"""A BentoML service around a score.py: __init__ calls init(), predict calls run()."""

import importlib.util
import inspect
import os
import sys
import typing

import bentoml
import pandas as pd

APP = os.environ["BENCH_APP_DIR"]


@bentoml.service(workers=int(os.environ.get("BENCH_WORKERS", "2")))
class Score:
    def __init__(self) -> None:
        os.chdir(APP)  # score.py loads model.pkl from the working directory, as in our image
        sys.path.insert(0, APP)
        spec = importlib.util.spec_from_file_location("score", os.path.join(APP, "score.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["score"] = module
        spec.loader.exec_module(module)
        module.init()
        self._run = module.run
        self._arg = next(iter(inspect.signature(module.run).parameters))

    @bentoml.api
    def predict(self, records: list[dict]) -> typing.Any:
        return self._run(**{self._arg: pd.DataFrame(records)})
'''


# --------------------------------------------------------------------------------------------
# The floor: run() in-process on a prepared input
# --------------------------------------------------------------------------------------------


def floor_child(app_dir: str, repeats: int = 5) -> None:
    """Prints JSON timings of run() on a prepared input (the request body read from stdin) and of
    the request path (json + schema)."""
    import timeit

    from mlportal_runtime.schema import build_inputs, load_schema

    os.chdir(app_dir)
    sys.path.insert(0, app_dir)
    import score  # noqa: PLC0415 - the app's module, found on the path set just above

    score.init()
    body_bytes = sys.stdin.buffer.read()
    schema = load_schema(Path("service_schema.json").read_text())
    inputs = build_inputs(schema, json.loads(body_bytes))

    def per_call(fn) -> float:
        for _ in range(50):  # warm caches and lazy imports
            fn()
        timer = timeit.Timer(fn)
        number, _ = timer.autorange()  # calls per batch: at least 0.2 s
        return min(timer.repeat(repeat=repeats, number=number)) / number  # the least disturbed batch

    run_s = per_call(lambda: score.run(**inputs))
    parse_s = per_call(lambda: build_inputs(schema, json.loads(body_bytes)))
    # One call at a time, as a server at one connection makes them: the spread of run() itself on
    # this machine, a floor under any server's p99 at c=1.
    calls = []
    for _ in range(5000):
        started = time.perf_counter()
        score.run(**inputs)
        calls.append(time.perf_counter() - started)
    calls.sort()
    print(json.dumps({"run_ms": run_s * 1000, "request_path_ms": parse_s * 1000,
                      "run_p50_ms": calls[len(calls) // 2] * 1000, "run_p99_ms": calls[int(len(calls) * 0.99)] * 1000}))


def floor_script() -> str:
    """floor_child as a script of its own (``python -c <script> APP_DIR``, the body on stdin), for
    any interpreter that has the app and ``mlportal_runtime``: this venv's or the container's."""
    return ("import json, os, sys, time\nfrom pathlib import Path\n" + inspect.getsource(floor_child)
            + "\nfloor_child(sys.argv[1])\n")


def _run_floor(python: list[str], app_dir: str, body: bytes, *, where: str, env: dict | None = None) -> dict:
    done = subprocess.run([*python, "-c", floor_script(), app_dir], input=body, capture_output=True, timeout=300,
                          env=env)
    if done.returncode != 0:
        raise RuntimeError(f"floor measurement {where} failed: {done.stderr.decode(errors='replace').strip()[-500:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def measure_floor_in_container(container_id: str, body: bytes) -> dict:
    """The floor on the container's own interpreter and libraries, the ones our server runs on
    (this venv's interpreter is slower at the churn pipeline: the peers' floor stays this venv's)."""
    from compute.images import APP_DIR

    return _run_floor(["docker", "exec", "-i", container_id, "python"], APP_DIR, body, where="in the container")


def measure_floor(app_dir: Path, body: bytes, cpu: int) -> dict:
    """The floor on this venv's interpreter, pinned to ``cpu`` (the peers' floor)."""
    return _run_floor(["taskset", "-c", str(cpu), sys.executable], str(app_dir), body, where="on the host",
                      env={**os.environ, "PYTHONPATH": str(common.REPO)})


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def our_server(case: str, app: Path, *, env_image: str, workers: int, cpu: int) -> Iterator[dict[str, str]]:
    """Builds the service image, runs it pinned to ``cpu``; yields its /score URLs: ``own`` at
    the container's own address (as every peer is reached, at its own socket) and
    ``published`` at the port the engine publishes on 127.0.0.1 (through the engine's
    userland proxy, ``docker-proxy``, while the engine runs with it); always removes the
    container and the image."""
    tag = common.image_tag(f"mlportal-bench-{case}", app)
    common.log(f"{case}: building the service image {tag}")
    common.build_app_image(tag=tag, app_dir=app, env=env_image)
    try:
        env = {"MLPORTAL_WORKERS": str(workers), "MLPORTAL_SERVICE_NAME": case}
        with common.bench_container(image=tag, name=f"mlportal-bench-{case}-{os.getpid()}", cpu=cpu,
                                    env=env) as started:
            from compute.containers import SERVICE_PORT, wait_ready

            wait_ready(host=started["host"], port=started["port"], timeout_s=120, container_id=started["id"])
            yield {"own": f"http://{common.container_address(started['id'])}:{SERVICE_PORT}/score",
                   "published": f"http://{started['host']}:{started['port']}/score", "id": started["id"]}
    finally:
        common.remove_image(tag)


@contextlib.contextmanager
def our_host_server(case: str, app: Path, work: Path, *, workers: int, cpu: int) -> Iterator[str]:
    """Runs the same scoring server as a host process (this venv, ``taskset`` on core ``cpu``),
    as the peers run: beside the container it shows what the container's own cgroup costs on a
    busy machine, where the engine's containers and the host's processes get their CPU shares
    as different groups. Yields the /score URL."""
    port = common.free_port()
    command = ["taskset", "-c", str(cpu), sys.executable, "-m", "mlportal_runtime.server", "--app-dir", str(app),
               "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "MLPORTAL_WORKERS": str(workers), "MLPORTAL_SERVICE_NAME": case,
           "PYTHONPATH": str(common.REPO)}
    with peer_process(f"ours-host-{case}", command, work=work, env=env, port=port, ready_path="/ready") as ready:
        yield f"http://127.0.0.1:{ready}/score"


def answer(url: str, body: bytes) -> str:
    """POSTs one request; returns the answer text, RuntimeError unless it is a 200."""
    parts = urlsplit(url)
    status, text = common.post_json(parts.hostname, parts.port, parts.path, body)
    if status != 200:
        raise RuntimeError(f"{url} answered {status}: {text[:300]!r}")
    return text.decode()


def load_both(targets: dict[str, tuple[str, bytes]], *, seconds: float, warmup: float, repeats: int,
              load_cpu: int | None) -> dict[str, dict[int, dict]]:
    """Warms each server with 16 connections, then, per connection count, runs wrk ``repeats``
    times against each server in turn and keeps each server's best figures (see best_of).

    Alternating means both servers meet the same background load of this shared machine.
    """
    scripts = {name: common.wrk_script(body) for name, (_, body) in targets.items()}
    for name, (url, _) in targets.items():
        common.run_wrk(url=url, script=scripts[name], connections=max(CONNECTIONS), seconds=warmup, cpu=load_cpu)
    figures: dict[str, dict[int, dict]] = {name: {} for name in targets}
    for connections in CONNECTIONS:
        runs: dict[str, list[dict]] = {name: [] for name in targets}
        for _ in range(repeats):
            for name, (url, _) in targets.items():
                runs[name].append(common.run_wrk(url=url, script=scripts[name], connections=connections,
                                                 seconds=seconds, cpu=load_cpu))
        for name in targets:
            figures[name][connections] = best_of(runs[name])
    return figures


def best_of(runs: list[dict]) -> dict:
    """Returns each figure at its best over ``runs``: the highest throughput, the lowest
    latencies (each run's disturbance by others hits different figures)."""
    best = dict(max(runs, key=lambda run: run["rps"]))
    for key in ("p50", "p90", "p99", "mean", "max"):
        best[key] = min(run[key] for run in runs)
    best["runs"] = len(runs)
    return best


def predictions(value) -> list[str]:
    """Returns the predictions an answer carries, as strings: ours (what run() returned, maybe
    as JSON text), MLflow's ``{"predictions": ...}``, an OIP ``{"outputs": [{"data": ...}]}``
    (MLServer), or BentoML's (run()'s value again)."""
    while isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            break
    if isinstance(value, dict) and "predictions" in value:
        return predictions(value["predictions"])
    if isinstance(value, dict) and value.get("outputs"):
        return predictions(value["outputs"][0].get("data"))
    if not isinstance(value, list):
        value = [value]
    return [str(item) for item in value]


def same_answer(ours: str, theirs: str) -> bool:
    """True when a peer's answer carries the predictions our /score answered."""
    return predictions(ours) == predictions(theirs)


def peer_python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def mlflow_python() -> Path:
    return peer_python("mlflow")


def ensure_peer_venv(peer: str) -> None:
    """Creates or completes ``peer``'s venv under the user's cache (never this project's venv)
    with its pinned packages and this venv's numpy/pandas/scikit-learn; returns at once when it
    already holds those versions."""
    wanted = common.pinned_requirements()
    distribution = PEER_DISTRIBUTION[peer]
    pinned = PEER_PACKAGES[peer][0].split("==", 1)[1].rstrip("*")
    check = ("import importlib.metadata as m; "
             f"print(' '.join(m.version(d) for d in ('numpy', 'pandas', 'scikit-learn', {distribution!r})))")
    python = peer_python(peer)
    if python.exists():
        done = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=120)
        versions = done.stdout.split()
        if done.returncode == 0 and versions[:3] == [r.split("==")[1] for r in wanted] \
                and versions[3].startswith(pinned):
            return
    venv = VENVS / peer
    common.log(f"installing {' '.join(PEER_PACKAGES[peer])} with {', '.join(wanted)} into {venv} (once)")
    if not python.exists():  # other benchmarks share these venvs: add to them, never wipe them
        venv.parent.mkdir(parents=True, exist_ok=True)
        base_python = Path(sys.base_prefix) / "bin" / "python3"
        subprocess.run([str(base_python), "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *PEER_PACKAGES[peer], *wanted], check=True, timeout=1800)


def ensure_mlflow_venv() -> None:
    ensure_peer_venv("mlflow")


# uvicorn --workers N (N > 1) binds the listener with proto 0, and asyncio turns TCP_NODELAY on
# only for sockets whose proto is IPPROTO_TCP: each keep-alive response then waits ~40 ms for the
# client's delayed ACK (Kludex/uvicorn#3149, open). We compare against MLflow at its best, not
# against that bug: a sitecustomize on the MLflow server's path sets TCP_NODELAY as asyncio
# means to. ``--mlflow-as-shipped`` leaves it out.
NODELAY_PATCH = '''\
"""Benchmark-only: TCP_NODELAY on accepted TCP sockets whatever their proto (uvicorn#3149)."""
import asyncio.base_events as _base_events
import socket as _socket


def _set_nodelay(sock):
    if sock.family in (_socket.AF_INET, _socket.AF_INET6) and sock.type == _socket.SOCK_STREAM:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)


_base_events._set_nodelay = _set_nodelay
'''


def runtime_path(work: Path) -> str:
    """A folder holding only ``azureml`` and ``mlportal_runtime`` (links to this checkout's), for
    the peers' PYTHONPATH: the churn template's score.py imports ``azureml.datacollector``, which
    our image provides; with capture off its calls do nothing, in our server and in theirs alike."""
    folder = work / "runtime-path"
    if not folder.exists():
        folder.mkdir()
        for name in ("azureml", "mlportal_runtime"):
            (folder / name).symlink_to(common.REPO / name, target_is_directory=True)
    return str(folder)


def mlflow_env(work: Path, *, nodelay_patch: bool = False) -> dict[str, str]:
    path = runtime_path(work)
    if nodelay_patch:
        patch_dir = work / "mlflow-nodelay"
        patch_dir.mkdir(exist_ok=True)
        (patch_dir / "sitecustomize.py").write_text(NODELAY_PATCH)
        path = f"{patch_dir}{os.pathsep}{path}"
    return {
        **os.environ,
        "PATH": f"{MLFLOW_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",  # serve finds uvicorn here
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_TRACKING_URI": (work / "mlruns").as_uri(),
        "PYTHONPATH": path,
    }


def save_mlflow_model(case: str, app: Path, record: dict, work: Path) -> Path:
    model_dir = work / f"mlflow-{case}"
    wrapper = work / f"mlflow_{case}_wrapper.py"
    wrapper.write_text(MLFLOW_WRAPPER)
    saver = work / "mlflow_save.py"
    saver.write_text(MLFLOW_SAVE)
    sample = work / f"{case}-sample.json"
    sample.write_text(json.dumps([record]))
    done = subprocess.run([str(mlflow_python()), str(saver), str(app), str(model_dir), str(wrapper), str(sample)],
                          cwd=work, env=mlflow_env(work), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{case}: saving the MLflow model failed: {done.stderr.strip()[-800:]}")
    return model_dir


@contextlib.contextmanager
def mlflow_server(model_dir: Path, work: Path, *, workers: int, cpu: int, as_shipped: bool) -> Iterator[int]:
    """Runs ``mlflow models serve`` on core ``cpu``; yields its port; always stops its process group."""
    port = common.free_port()
    log_file = (work / f"{model_dir.name}.log").open("wb")
    command = ["taskset", "-c", str(cpu), str(MLFLOW_VENV / "bin" / "mlflow"), "models", "serve",
               "-m", str(model_dir), "--env-manager", "local", "-w", str(workers), "-h", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, cwd=work, env=mlflow_env(work, nodelay_patch=not as_shipped),
                               stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            common.wait_http("127.0.0.1", port, "/ping", timeout_s=180, alive=lambda: process.poll() is None)
        except RuntimeError as exc:
            log_file.flush()
            tail = (work / f"{model_dir.name}.log").read_text(errors="replace")[-800:]
            raise RuntimeError(f"{exc}\n{tail}") from None
        yield port
    finally:
        stop_group(process)
        log_file.close()


def stop_group(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Stops the process group ``process`` leads (mlflow, its shell and the uvicorn workers) and
    waits until none of it is left: SIGTERM, then SIGKILL after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    signalled = False
    while True:
        if process.poll() is None:
            time.sleep(0.05)
        else:
            try:
                os.killpg(process.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            time.sleep(0.05)
        if time.monotonic() > deadline:
            if signalled:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            signalled = True
            deadline = time.monotonic() + 5


@contextlib.contextmanager
def peer_process(name: str, command: list[str], *, work: Path, env: dict[str, str], port: int,
                 ready_path: str) -> Iterator[int]:
    """Runs a peer server's ``command`` in its own process group until ``ready_path`` answers
    200 on ``port``; yields the port; always stops the whole group."""
    log_path = work / f"{name}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(command, cwd=work, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        try:
            common.wait_http("127.0.0.1", port, ready_path, timeout_s=300, alive=lambda: process.poll() is None)
        except RuntimeError as exc:
            log_file.flush()
            raise RuntimeError(f"{exc}\n{log_path.read_text(errors='replace')[-800:]}") from None
        yield port
    finally:
        stop_group(process)
        log_file.close()


def mlserver_request(record: dict) -> bytes:
    """An OIP v2 request of one record, one tensor per column, decoded by MLServer's pandas codec."""
    inputs = []
    for column, value in record.items():
        if isinstance(value, str):
            inputs.append({"name": column, "shape": [1], "datatype": "BYTES", "data": [value],
                           "parameters": {"content_type": "str"}})
        else:
            datatype = "BOOL" if isinstance(value, bool) else "INT64" if isinstance(value, int) else "FP64"
            inputs.append({"name": column, "shape": [1], "datatype": datatype, "data": [value]})
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": inputs}).encode()


@contextlib.contextmanager
def mlserver_server(case: str, app: Path, work: Path, *, workers: int, cpu: int) -> Iterator[str]:
    """Runs ``mlserver start`` with its scikit-learn runtime (``mlserver_sklearn.SKLearnModel``,
    whose predict is what both run()s do: ``model.predict`` on the DataFrame) on the same
    model.pkl, ``parallel_workers`` = our worker count, on core ``cpu``; yields the infer URL."""
    folder = work / f"mlserver-{case}"
    folder.mkdir()
    shutil.copy(app / "model.pkl", folder / "model.pkl")
    port, grpc_port, metrics_port = common.free_port(), common.free_port(), common.free_port()
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "parallel_workers": workers}))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": case, "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.pkl"}}))
    command = ["taskset", "-c", str(cpu), str(VENVS / "mlserver" / "bin" / "mlserver"), "start", str(folder)]
    env = {**os.environ, "PATH": f"{VENVS / 'mlserver' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    with peer_process(f"mlserver-{case}", command, work=work, env=env, port=port,
                      ready_path=f"/v2/models/{case}/ready") as ready:
        yield f"http://127.0.0.1:{ready}/v2/models/{case}/infer"


@contextlib.contextmanager
def bentoml_server(case: str, app: Path, work: Path, *, workers: int, cpu: int) -> Iterator[str]:
    """Runs ``bentoml serve`` of BENTO_SERVICE (the same init() and run()) with ``workers``
    workers on core ``cpu``; yields the predict URL."""
    folder = work / f"bentoml-{case}"
    folder.mkdir()
    (folder / "service.py").write_text(BENTO_SERVICE)
    port = common.free_port()
    command = ["taskset", "-c", str(cpu), str(VENVS / "bentoml" / "bin" / "bentoml"), "serve", "service:Score",
               "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "PATH": f"{VENVS / 'bentoml' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "BENCH_APP_DIR": str(app), "BENCH_WORKERS": str(workers), "BENTOML_DO_NOT_TRACK": "True",
           "BENTOML_HOME": str(folder / "home"), "PYTHONPATH": f"{folder}{os.pathsep}{runtime_path(work)}"}
    with peer_process(f"bentoml-{case}", command, work=folder, env=env, port=port, ready_path="/readyz") as ready:
        yield f"http://127.0.0.1:{ready}/predict"


# --------------------------------------------------------------------------------------------
# Figures and report
# --------------------------------------------------------------------------------------------


def overhead_ms(figures: dict, connections: int, floor_ms: float) -> float:
    """What the server adds above the floor: at 1 connection the median latency minus the floor;
    at more (the server's core saturated) its core time per request, 1/throughput, minus the floor."""
    if connections == 1:
        return figures["p50"] - floor_ms
    return 1000.0 / figures["rps"] - floor_ms


def variants_of(result: dict) -> list[str]:
    return [variant for variant in VARIANTS if variant in result]


def peers_of(result: dict) -> list[str]:
    return [peer for peer in PEERS if peer in result]


def floor_of(result: dict, server: str) -> float:
    """The floor ``server``'s overhead is taken above: its own interpreter's if measured there
    (ours, in its container), else this venv's."""
    return result[server].get("floor_ms", result["floor"]["run_ms"])


def ratios(result: dict, connections: int, against: str = "mlflow") -> dict[str, float]:
    """ours / theirs for ``against`` (a peer, or "best": the best peer figure by figure)."""
    ours = result["ours"]["load"][connections]
    floor = result["floor"]["run_ms"]
    ours_floor = floor_of(result, "ours")
    if against == "best":
        loads = [result[peer]["load"][connections] for peer in peers_of(result)]
        rps = max(load["rps"] for load in loads)
        p99 = min(load["p99"] for load in loads)
        overhead = min(overhead_ms(load, connections, floor) for load in loads)
    else:
        theirs = result[against]["load"][connections]
        rps, p99, overhead = theirs["rps"], theirs["p99"], overhead_ms(theirs, connections, floor)
    return {
        "throughput_ratio": common.ratio(ours["rps"], rps),
        "p99_ratio": common.ratio(ours["p99"], p99),
        "overhead_ratio": common.ratio(overhead_ms(ours, connections, ours_floor), overhead),
    }


def goal_verdicts(case: str, values: dict[str, float], against: str = "mlflow") -> list[str]:
    """Returns 'key=value (goal >= x): met|MISSED' for each goal of ``case`` against ``against``."""
    verdicts = []
    for key, (op, bound) in GOALS.get(case, {}).get(against, {}).items():
        value = values[key]
        met = value >= bound if op == ">=" else value <= bound
        verdict = "met" if met else "MISSED"
        verdicts.append(f"{key}={common.fmt_ratio(value)} (goal {op} {common.fmt_ratio(bound)}): {verdict}")
    return verdicts


def report(results: dict, workers: int) -> list[str]:
    lines = [
        f"serving {results['date']}: {workers} worker(s) per server on core {results['server_cpu']}, wrk on core "
        f"{results['load_cpu']}, single-record POSTs, best of {results['repeats']} x {results['seconds']:g} s; "
        f"MLflow {'as shipped' if results['mlflow_as_shipped'] else 'with TCP_NODELAY restored (uvicorn#3149)'}; "
        f"load average at start {results['loadavg']}",
    ]
    header = (f"{'case':<6} {'server':<14} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
              f"{'overhead ms':>12}")
    for case, result in results["cases"].items():
        floor = result["floor"]
        lines.append(f"{case}: floor run() {floor['run_ms']:.3f} ms in-process; request path (json + schema) "
                     f"{floor['request_path_ms']:.3f} ms")
        if "floor_container" in result:
            lines.append(f"{case}: floor run() in our container {result['floor_container']['run_ms']:.3f} ms "
                         f"(ours and ours_published: overhead above this one)")
        if "run_p99_ms" in floor:  # a zero-cost server's p99 at c=1 could not be below run()'s own
            best_p99 = min(result[peer]["load"][1]["p99"] for peer in peers_of(result)) if peers_of(result) else 0
            lines.append(f"{case}: run() alone, one call at a time: p50 {floor['run_p50_ms']:.3f} ms, p99 "
                         f"{floor['run_p99_ms']:.3f} ms, which is {common.fmt_ratio(common.ratio(floor['run_p99_ms'], best_p99))} "
                         f"of the best peer's p99 at c=1 (the lowest p99 ratio any server could reach)")
        lines.append(header)
        for server in ("ours", *variants_of(result), *peers_of(result)):
            for c, fig in result[server]["load"].items():
                lines.append(f"{case:<6} {server:<14} {c:>3} {fig['rps']:>8.0f} {fig['p50']:>8.2f} {fig['p90']:>8.2f} "
                             f"{fig['p99']:>8.2f} {overhead_ms(fig, c, floor_of(result, server)):>12.3f}")
    lines.append("goals:")
    for case, result in results["cases"].items():
        for variant in ("ours", *variants_of(result)):
            as_ours = {**result, "ours": result[variant]}
            for against in ("mlflow", "best"):
                if against != "best" and against not in result:
                    continue
                for c in CONNECTIONS:
                    verdicts = goal_verdicts(case, ratios(as_ours, c, against), against)
                    if verdicts:
                        label = "" if variant == "ours" else f" ({VARIANTS[variant]})"
                        lines.append(f"  {case} c={c} vs {PEER_TITLES[against]}{label}: " + "; ".join(verdicts))
    for case, result in results["cases"].items():
        for against in (*peers_of(result), "best"):
            for c in CONNECTIONS:
                lines.append(common.ratio_line(f"{case} {against} c={c}", **ratios(result, c, against)))
        for variant in variants_of(result):  # the same server reached another way, against the best peer
            as_ours = {**result, "ours": result[variant]}
            for c in CONNECTIONS:
                lines.append(common.ratio_line(f"{case} {variant} best c={c}", **ratios(as_ours, c, "best")))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 3)), help="per wrk run")
    parser.add_argument("--repeats", type=int, default=4, help="wrk runs per figure; the best figures are kept")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of 16-connection load before measuring")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of each server")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--peers", default=",".join(PEERS), help=f"peers to measure (of {', '.join(PEERS)})")
    parser.add_argument("--mlflow-as-shipped", action="store_true",
                        help="leave out the TCP_NODELAY fix for uvicorn#3149 (MLflow -w > 1 then pays ~40 ms a request)")
    parser.add_argument("--ours-host", action="store_true",
                        help="also run our server as a host process (as the peers run), reported as ours_host")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in PREPARE]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not peers or any(p not in PEERS for p in peers):
        parser.error(f"--peers takes some of {', '.join(PEERS)}")

    server_cpu, load_cpu = common.server_and_load_cpus()
    for peer in peers:
        ensure_peer_venv(peer)
    common.log("preparing the environment image (built once per requirement set)")
    env_image = common.env_image()
    results: dict = {"server_cpu": server_cpu, "load_cpu": load_cpu, "seconds": args.seconds, "repeats": args.repeats,
                     "workers": args.workers, "date": time.strftime("%Y-%m-%d"), "cases": {},
                     "mlflow_as_shipped": args.mlflow_as_shipped, "loadavg": common.loadavg()}
    work = Path(tempfile.mkdtemp(prefix="mlportal-bench-serving-"))
    try:
        for case in cases:
            common.log(f"{case}: preparing the model and app files")
            app, input_name, record = PREPARE[case](work)
            body = json.dumps({input_name: [record]}).encode()
            result: dict = {"floor": measure_floor(app, body, server_cpu)}
            common.log(f"{case}: floor {result['floor']['run_ms']:.3f} ms")
            with contextlib.ExitStack() as stack:
                urls = stack.enter_context(our_server(case, app, env_image=env_image, workers=args.workers, cpu=server_cpu))
                targets = {"ours": (urls["own"], body), "ours_published": (urls["published"], body)}
                result["floor_container"] = measure_floor_in_container(urls["id"], body)
                common.log(f"{case}: floor in our container {result['floor_container']['run_ms']:.3f} ms")
                if args.ours_host:
                    targets["ours_host"] = (stack.enter_context(our_host_server(case, app, work, workers=args.workers,
                                                                                cpu=server_cpu)), body)
                if "mlflow" in peers:
                    model_dir = save_mlflow_model(case, app, record, work)
                    port = stack.enter_context(mlflow_server(model_dir, work, workers=args.workers, cpu=server_cpu,
                                                             as_shipped=args.mlflow_as_shipped))
                    targets["mlflow"] = (f"http://127.0.0.1:{port}/invocations",
                                         json.dumps({"dataframe_records": [record]}).encode())
                if "mlserver" in peers:
                    targets["mlserver"] = (stack.enter_context(mlserver_server(case, app, work, workers=args.workers,
                                                                               cpu=server_cpu)), mlserver_request(record))
                if "bentoml" in peers:
                    targets["bentoml"] = (stack.enter_context(bentoml_server(case, app, work, workers=args.workers,
                                                                             cpu=server_cpu)),
                                          json.dumps({"records": [record]}).encode())
                for name, (url, payload) in targets.items():
                    result[name] = {"answer": answer(url, payload)}
                    if name in ("ours", "ours_published"):  # the container's interpreter: its own floor
                        result[name]["floor_ms"] = result["floor_container"]["run_ms"]
                    common.log(f"{case}: {name} answers {result[name]['answer'][:70]}")
                common.log(f"{case}: loading {', '.join(targets)} in turn")
                figures = load_both(targets, seconds=args.seconds, warmup=args.warmup, repeats=args.repeats,
                                    load_cpu=load_cpu)
            for name in targets:
                result[name]["load"] = figures[name]
                if name not in ("ours", *VARIANTS) and not same_answer(result["ours"]["answer"], result[name]["answer"]):
                    raise RuntimeError(f"{case}: the servers disagree: ours {result['ours']['answer']!r}, "
                                       f"{name} {result[name]['answer']!r}")
            results["cases"][case] = result
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        common.dump(args.json, results)
    print("\n".join(report(results, args.workers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
