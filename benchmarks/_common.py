"""Shared parts of the benchmarks: images, bench containers, the wrk load generator, figures.

The benchmarks run from the repository (``.venv/bin/python benchmarks/<name>.py``) and use the
product's own compute API to build and start images, so they measure what a deployed service
is. Every container they start is labelled ``mlportal.kind=bench`` and removed in a ``finally``.

Core layout on this 2-core machine: the server under test gets core 0 (``SERVER_CPU``), the
load generator core 1 (``LOAD_CPU``), so the two never compete for one core and both servers
get the same single core.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: `python benchmarks/serving.py`
    sys.path.insert(0, str(REPO))

BASE_IMAGE = os.environ.get("MLPORTAL_BASE_IMAGE", "python:3.11-slim")
WHEEL_CACHE = Path(os.environ.get("MLPORTAL_WHEEL_CACHE", "~/.cache/mlportal/wheels")).expanduser()
BENCH_KIND = "bench"
SERVER_CPU = 0
LOAD_CPU = 1
WRK = shutil.which("wrk") or "/usr/bin/wrk"
TEMPLATES = REPO / "runs" / "project_templates"


def log(message: str) -> None:
    """Progress goes to stderr so stdout holds only the figures."""
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def quiet(_line: str) -> None:
    """A build log sink: build output only matters when a build fails, and BuildError has its tail."""


def cpu_list() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def server_and_load_cpus() -> tuple[int, int | None]:
    """Returns (server core, load-generator core); the load generator shares it on a 1-core box."""
    cpus = cpu_list()
    if len(cpus) >= 2:
        return cpus[0], cpus[1]
    return cpus[0], None


def loadavg() -> str:
    """Returns the 1-minute load average: a busy machine at the start explains slow figures."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def pinned_requirements() -> list[str]:
    """Returns numpy/pandas/scikit-learn pinned to this venv's versions.

    Models are trained here and unpickled in the image and in the MLflow venv: one set of
    versions everywhere makes the same pickle load without version warnings.
    """
    import numpy
    import pandas
    import sklearn

    return [f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}",
            f"scikit-learn=={sklearn.__version__}"]


def env_image() -> str:
    """Returns the environment image with the pinned requirements, building it once."""
    from compute.envimage import ensure_env_image

    return ensure_env_image(base_image=BASE_IMAGE, requirements=pinned_requirements(),
                            wheel_cache=WHEEL_CACHE, log=quiet)


def app_files(app_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(app_dir).as_posix(): p.read_bytes()
            for p in sorted(app_dir.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def build_app_image(*, tag: str, app_dir: Path, env: str) -> str:
    """Builds the service image ``tag`` from the files of ``app_dir``; returns the tag."""
    from compute.images import build_service_image

    build_service_image(tag=tag, env_image=env, app_files=app_files(app_dir),
                        labels={"mlportal.bench": "1"}, log=quiet)
    return tag


def remove_image(tag: str) -> None:
    from compute.images import remove_image as _remove

    with contextlib.suppress(Exception):
        _remove(tag)


def pin_container(container_id: str, cpu: int) -> None:
    """Pins a running container to one core (the compute API sets a CPU quota, not a cpuset)."""
    subprocess.run(["docker", "update", "--cpuset-cpus", str(cpu), container_id],
                   check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def bench_container(*, image: str, name: str, env: dict[str, str] | None = None,
                    cpu: int | None = None, cpus: float = 1.0) -> Iterator[dict]:
    """Starts a service container of ``image`` labelled ``mlportal.kind=bench``; yields
    ``{"id", "host", "port"}`` (not waited for) and always stops and removes it."""
    from compute.containers import start_service_container, stop_container

    started = start_service_container(image=image, service_id=name, replica=0, name=name,
                                      env=dict(env or {}), cpus=cpus,
                                      labels={"mlportal.kind": BENCH_KIND})
    try:
        if cpu is not None:
            pin_container(started["id"], cpu)
        yield started
    finally:
        with contextlib.suppress(Exception):
            stop_container(started["id"], timeout=2)


def container_address(container_id: str) -> str:
    """The container's own address on its network (the first one it has)."""
    done = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                           container_id], check=True, capture_output=True, text=True, timeout=30)
    addresses = done.stdout.split()
    if not addresses:
        raise RuntimeError(f"container {container_id[:12]} has no network address")
    return addresses[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post_json(host: str, port: int, path: str, body: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """POSTs ``body`` and returns (status, response body); OSError when nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_http(host: str, port: int, path: str, *, timeout_s: float, alive: Callable[[], bool]) -> None:
    """Returns once GET ``path`` answers 200; RuntimeError when ``alive()`` turns false or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if not alive():
            raise RuntimeError(f"the server on port {port} exited before {path} answered 200")
        time.sleep(0.1)
    raise RuntimeError(f"the server on port {port} did not answer {path} with 200 within {timeout_s:g} s")


# --------------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------------

# The done() hook prints one machine-readable line: wrk's own summary rounds p99 to two digits
# and mixes units. Latencies are in microseconds.
WRK_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d errors=%d non2xx=%d p50_us=%d p90_us=%d p99_us=%d mean_us=%.1f max_us=%d\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def lua_string(text: str) -> str:
    """Returns ``text`` as a Lua long-bracket string literal that no content can close early."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]" if not text.startswith("\n") else f"[{eq}[\n{text}]{eq}]"


def wrk_script(body: bytes, headers: dict[str, str] | None = None) -> str:
    """Returns the Lua script that makes wrk POST ``body`` as JSON and report its figures."""
    # A space inside the brackets: ``wrk.headers[[[Name]]]`` would read as a call with the long
    # string ``[[[Name]]``, a syntax error that makes wrk drop the whole script (plain GETs).
    lines = "\n".join(f"wrk.headers[ {lua_string(k)} ] = {lua_string(v)}" for k, v in (headers or {}).items())
    return WRK_LUA.format(body=lua_string(body.decode()), headers=lines)


RESULT_RE = re.compile(r"^WRKRESULT (.*)$", re.MULTILINE)


def parse_wrk(output: str) -> dict:
    """Returns the figures of a wrk run from its output: requests, seconds, errors, non2xx,
    rps, and p50/p90/p99/mean/max in milliseconds. ValueError when the result line is missing."""
    match = RESULT_RE.search(output)
    if not match:
        raise ValueError("wrk printed no WRKRESULT line (was the Lua script loaded?): " + output.strip()[-300:])
    raw = dict(part.split("=", 1) for part in match.group(1).split())
    seconds = int(raw["duration_us"]) / 1e6
    requests = int(raw["requests"])
    figures = {
        "requests": requests,
        "seconds": seconds,
        "errors": int(raw["errors"]),
        "non2xx": int(raw["non2xx"]),
        "rps": requests / seconds if seconds > 0 else 0.0,
    }
    for key in ("p50", "p90", "p99", "mean", "max"):
        figures[key] = float(raw[f"{key}_us"]) / 1000.0
    return figures


def run_wrk(*, url: str, script: str, connections: int, seconds: float, cpu: int | None) -> dict:
    """Runs wrk against ``url`` (one thread, ``connections`` keep-alive connections) on core
    ``cpu``; returns parse_wrk's figures. RuntimeError when wrk fails or a request failed."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        command = [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                   "-s", handle.name, url]
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    figures = parse_wrk(done.stdout)
    if figures["errors"] or figures["non2xx"] or not figures["requests"]:
        raise RuntimeError(f"wrk against {url}: {figures['requests']} requests, {figures['errors']} socket "
                           f"errors, {figures['non2xx']} non-2xx answers")
    return figures


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs, infinite when theirs is zero (a ratio line never divides by zero)."""
    if theirs == 0:
        return float("inf") if ours else 1.0
    return ours / theirs


def fmt_ratio(value: float) -> str:
    if value == float("inf"):
        return "inf"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def ratio_line(label: str, **ratios: float) -> str:
    """Returns ``label key=value ...`` with each ratio rounded for reading."""
    return " ".join([label, *(f"{key}={fmt_ratio(value)}" for key, value in ratios.items())])


RATIO_LINE_RE = re.compile(r"^(?P<label>[a-z_][\w ]*?(?: c=\d+)?)(?P<pairs>(?: [a-z_0-9]+=\S+)+)$")


def parse_ratio_line(line: str) -> tuple[str, dict[str, float]] | None:
    """Returns (label, {key: value}) for a ratio line like ``light c=16 throughput_ratio=3.4``,
    None for any other line."""
    match = RATIO_LINE_RE.match(line.strip())
    if not match:
        return None
    pairs: dict[str, float] = {}
    for pair in match.group("pairs").split():
        key, value = pair.split("=", 1)
        try:
            pairs[key] = float(value)
        except ValueError:
            return None
    return match.group("label"), pairs


def dump(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


# --------------------------------------------------------------------------------------------
# Cases: an app folder (score.py, service_schema.json, model.pkl) and one request record
# --------------------------------------------------------------------------------------------

LIGHT_SCORE = '''\
"""Light benchmark service: a small decision tree on 4 numeric columns; run() only predicts."""

import pickle

model = None


def init():
    global model
    with open("model.pkl", "rb") as handle:
        model = pickle.load(handle)


def run(data):
    return model.predict(data).tolist()
'''


def prepare_light(root: Path) -> tuple[Path, str, dict]:
    """Trains a depth-4 tree on the iris measurements (shipped with scikit-learn) and writes its
    app folder under ``root``; returns (app folder, run() input name, one record)."""
    import pickle

    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    from mlportal_runtime.schema import generate_schema

    app = root / "light"
    app.mkdir()
    iris = load_iris()
    frame = pd.DataFrame(iris.data, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    model = DecisionTreeClassifier(max_depth=4, random_state=0).fit(frame, iris.target)
    (app / "model.pkl").write_bytes(pickle.dumps(model))
    (app / "score.py").write_text(LIGHT_SCORE)
    namespace: dict = {}
    exec(compile(LIGHT_SCORE, str(app / "score.py"), "exec"), namespace)  # noqa: S102 - our own text
    generate_schema(namespace["run"], inputs={"data": frame.head(3)}, filepath=app / "service_schema.json")
    return app, "data", frame.iloc[70].to_dict()


def prepare_churn(root: Path) -> tuple[Path, str, dict]:
    """Trains the churn template in a copy under ``root`` with its own script, makes its schema
    with ``churn_schema_gen.py``; returns (app folder, run() input name, the lab's record)."""
    template = TEMPLATES / "churn"
    work = root / "churn-project"
    shutil.copytree(template, work, ignore=shutil.ignore_patterns("__pycache__", "outputs"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(work)])}
    for script in ("CATelcoCustomerChurnModelingWithoutDprep.py", "churn_schema_gen.py"):
        done = subprocess.run([sys.executable, script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"churn template: {script} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    app = root / "churn"
    app.mkdir()
    for name in ("score.py", "service_schema.json"):
        shutil.copy(work / name, app / name)
    shutil.copy(work / "outputs" / "model.pkl", app / "model.pkl")
    record = json.loads((template / "sample_request.json").read_text())["input_df"][0]
    return app, "input_df", record


PREPARE = {"light": prepare_light, "churn": prepare_churn}


def image_tag(prefix: str, app: Path) -> str:
    """Returns ``prefix:<12 hex>``, a tag naming the app folder's content."""
    import hashlib

    digest = hashlib.sha256()
    for name, data in app_files(app).items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return f"{prefix}:{digest.hexdigest()[:12]}"
