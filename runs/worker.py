"""What a worker does with a run: claim it, prepare its environment, execute it through `compute`,
stream its log and metrics into the database, store its outputs and record how it ended; and the
sweep that marks runs lost when their worker died.

`runs.tasks` calls `execute` and `sweep_lost_runs`; every database write goes through `runs.services`.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tarfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import connections
from django.utils import timezone

from compute.engine import LABEL_ID, BuildError, EngineError
from compute.envimage import ensure_env_image
from compute.runner import (LocalSandbox, RunSpec, list_containers, python_for_user, remove_container, run_in_docker,
                            run_local)
from mlportal_runtime import parse_line
from runs import services
from runs.models import Run, Target, requirement_lines
from runs.outputs import OutputsWriter
from workspaces.instance import portal_instance

logger = logging.getLogger(__name__)

# Lines reach the database at least this often, so a page polling every second shows a new line
# within about a second of the script printing it.
FLUSH_S = 0.3
HEARTBEAT_S = 2.0
CANCEL_CHECK_S = 1.0
# A chunk holds at most this many lines; a burst is split across several flushes' worth of rows.
MAX_LINES_PER_CHUNK = 2000
MIB = 1024 * 1024
# Metric points are written in batches of this many rows; while this many wait unwritten, the
# thread reading the script's output waits for the writer (the script then blocks on its stdout),
# so a script printing a million points keeps the worker's memory flat instead of buffering them.
METRIC_BATCH = 20_000
MAX_PENDING_METRICS = 2 * METRIC_BATCH


class RunSink:
    """Collects a run's output from the runner's threads and writes it from one flusher thread.

    Metric, param and tag lines are parsed and stored as such (kept out of the plain log); other
    lines are appended to the log in small batches. The flusher also stamps the heartbeat.
    """

    def __init__(self, run: Run):
        self.run_id = run.id
        self.workspace_id = run.workspace_id
        self._lines: list[str] = []
        self._metrics: list[dict] = []
        self._params: list[tuple[str, str]] = []
        self._tags: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"run-sink-{run.id}", daemon=True)
        self._status = run.status
        self._last_cancel_check = 0.0
        self.metric_count = 0

    def start(self) -> RunSink:
        self._thread.start()
        return self

    def output(self, line: str) -> None:
        """A line the script printed: a metric, param or tag when it is one, else a log line.
        Waits while MAX_PENDING_METRICS points are still unwritten (backpressure on the script)."""
        parsed = parse_line(line)
        with self._lock:
            if parsed is None:
                self._lines.append(line)
                return
            kind, data = parsed
            if kind in ("metric", "metrics"):
                if kind == "metric":
                    self._metrics.append(data)
                    self.metric_count += 1
                else:
                    self._metrics.extend(data)
                    self.metric_count += len(data)
                if len(self._metrics) >= MAX_PENDING_METRICS:
                    self._wake.set()
                    while len(self._metrics) >= METRIC_BATCH and not self._stop.is_set() and self._thread.is_alive():
                        self._drained.wait(timeout=1.0)
            elif kind == "param":
                self._params.append((data["name"], data["value"]))
            else:
                self._tags.append((data["key"], data["value"]))

    def log(self, line: str) -> None:
        """A line of the portal's own (prepare log, notes): never parsed as a metric."""
        with self._lock:
            self._lines.append(line)

    def should_cancel(self) -> bool:
        """True once the run's status in the database is no longer active (a cancel, a sweep)."""
        now = time.monotonic()
        if now - self._last_cancel_check >= CANCEL_CHECK_S:
            self._last_cancel_check = now
            status = Run.objects.filter(id=self.run_id).values_list("status", flat=True).first()
            self._status = status or Run.Status.CANCELED
        return self._status not in (Run.Status.PREPARING, Run.Status.RUNNING)

    def flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                params, self._params = self._params, []
                tags, self._tags = self._tags, []
            if params:
                for problem in services.run_log_params(run_id=self.run_id, workspace_id=self.workspace_id, params=params):
                    self.log(f"[mlportal] param not recorded: {problem}")
            if tags:
                services.run_set_tags(run_id=self.run_id, workspace_id=self.workspace_id, tags=tags)
            while True:
                with self._lock:
                    batch, self._metrics = self._metrics[:METRIC_BATCH], self._metrics[METRIC_BATCH:]
                if not batch:
                    break
                services.run_record_metrics(run_id=self.run_id, workspace_id=self.workspace_id, points=batch)
                with self._lock:
                    self._drained.notify_all()
            with self._lock:
                lines, self._lines = self._lines, []
            for start in range(0, len(lines), MAX_LINES_PER_CHUNK):
                services.run_append_log(run_id=self.run_id, workspace_id=self.workspace_id,
                                        lines=lines[start:start + MAX_LINES_PER_CHUNK])

    def _loop(self) -> None:
        last_beat = 0.0
        try:
            while not self._stop.is_set():
                self._wake.wait(FLUSH_S)
                self._wake.clear()
                try:
                    self.flush()
                    if time.monotonic() - last_beat >= HEARTBEAT_S:
                        last_beat = time.monotonic()
                        services.run_heartbeat(run_id=self.run_id)
                except Exception:  # noqa: BLE001 - a database hiccup must not end the run; retried next tick
                    logger.exception("run %s: writing log/heartbeat failed", self.run_id)
        finally:
            connections.close_all()  # this thread's own connection

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        with self._lock:
            self._drained.notify_all()
        self.flush()


def _requirements_of(snapshot: Path) -> list[str]:
    """The requirement lines of the snapshot's requirements.txt (the environment as submitted)."""
    try:
        with tarfile.open(snapshot) as tar:
            member = tar.getmember("requirements.txt")
            text = tar.extractfile(member).read(256 * 1024).decode("utf-8", "replace")
    except (KeyError, tarfile.TarError, OSError, AttributeError):
        return []
    return requirement_lines(text)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute(run_id) -> str:
    """Executes a queued run to its end and returns its final status ("skipped" when the run was
    not queued: a duplicate delivery or a cancel got there first, so nothing is started twice)."""
    run = services.run_claim(run_id=run_id, worker=_worker_name())
    if run is None:
        return "skipped"
    sink = RunSink(run).start()
    workdir = Path(settings.MLPORTAL_WORK_DIR) / str(run.id)
    outcome = {"status": Run.Status.FAILED, "reason": "", "exit_code": None, "oom": False, "image": None}
    try:
        if run.kind == Run.Kind.PREPARE:
            outcome.update(_prepare(run, sink))
        else:
            outcome.update(_execute_script(run, sink, workdir))
    except BuildError as exc:  # our own prepare step; the runner reports its build errors itself
        reason = f"environment preparation failed: {exc}"
        sink.log(f"[prepare] error: {reason}")
        outcome.update(status=Run.Status.FAILED, reason=reason)
    except EngineError as exc:
        # EngineUnreachable reads "Docker engine unreachable at <url>: <why>. Start the engine…".
        reason = str(exc)
        sink.log(f"[mlportal] error: {reason}")
        outcome.update(status=Run.Status.FAILED, reason=reason)
    except Exception as exc:  # noqa: BLE001 - the run must end failed, not stay running
        logger.exception("run %s failed in the worker", run.id)
        sink.log(f"[mlportal] internal error: {type(exc).__name__}: {exc}")
        outcome.update(status=Run.Status.FAILED, reason=f"internal error in the worker: {type(exc).__name__}: {exc}")
    finally:
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    prepare_charts(run.id)
    return services.run_finish(run_id=run.id, **outcome)


def prepare_charts(run_id) -> None:
    """Downsamples every series of a run that just ended and keeps the result, so its page never
    reads the raw points; a failure here only means the first page view computes them."""
    from runs import selectors

    try:
        selectors.chart_series(Run.objects.get(id=run_id))
    except Exception:  # noqa: BLE001 - a cache; the run's end must still be recorded
        logger.exception("run %s: preparing its charts failed", run_id)


def _prepare(run: Run, sink: RunSink) -> dict:
    sink.log(f"[mlportal] preparing the environment of project {run.project.name} for target docker")
    image = ensure_env_image(
        base_image=settings.MLPORTAL_BASE_IMAGE, requirements=run.project.requirement_lines,
        wheel_cache=settings.MLPORTAL_WHEEL_CACHE, log=sink.log, base_url=settings.MLPORTAL_DOCKER_URL,
        timeout_s=settings.MLPORTAL_BUILD_TIMEOUT, source_packages=settings.MLPORTAL_SOURCE_PACKAGES,
    )
    services.run_mark_running(run_id=run.id, image=image)
    sink.log(f"[mlportal] environment image {image} is ready")
    return {"status": Run.Status.COMPLETED, "image": image, "exit_code": 0}


def _execute_script(run: Run, sink: RunSink, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    snapshot = workdir / "snapshot.tar"
    with services.open_blob(run.snapshot) as src, open(snapshot, "wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    project = run.project
    spec = RunSpec(
        run_id=str(run.id), snapshot=snapshot, script=run.script, args=list(run.args or []),
        requirements=_requirements_of(snapshot), base_image=settings.MLPORTAL_BASE_IMAGE,
        memory_mb=project.memory_mb, cpus=project.cpus, timeout_s=project.time_limit_s,
        network=project.allow_network, env={"MLPORTAL_RUN_ID": str(run.id), "MLPORTAL_RUN_NUMBER": str(run.number),
             "MLPORTAL_PROJECT_ID": str(run.project_id)},
        portal=portal_instance(),
        outputs_max_bytes=project.outputs_cap_mb * MIB, tmp_mb=settings.MLPORTAL_RUN_TMP_MB,
        scratch_max_bytes=(project.outputs_cap_mb + settings.MLPORTAL_RUN_SCRATCH_MB) * MIB,
    )
    command = " ".join(["python", run.script, *spec.args])
    sink.log(f"[mlportal] run {run}: {command} on target {run.target}")
    if run.target == Target.DOCKER:
        image = ensure_env_image(
            base_image=spec.base_image, requirements=spec.requirements, wheel_cache=settings.MLPORTAL_WHEEL_CACHE,
            log=lambda line: sink.log(f"[prepare] {line}"), base_url=settings.MLPORTAL_DOCKER_URL,
            timeout_s=settings.MLPORTAL_BUILD_TIMEOUT, source_packages=settings.MLPORTAL_SOURCE_PACKAGES,
        )
        if not services.run_mark_running(run_id=run.id, image=image):
            return {"status": Run.Status.CANCELED, "reason": "canceled before it started", "image": image}
        already_said = f"[prepare] environment image {image} is ready (reused)"

        def on_output(line: str) -> None:
            # The runner checks the image again; the log already says it is ready.
            if line != already_said:
                sink.output(line)

        def execute(store_output):
            return run_in_docker(
                spec, wheel_cache=settings.MLPORTAL_WHEEL_CACHE, on_output=on_output, should_cancel=sink.should_cancel,
                on_container=lambda cid: services.run_set_container(run_id=run.id, container_id=cid),
                workdir=workdir, base_url=settings.MLPORTAL_DOCKER_URL, store_output=store_output,
            )
    else:
        if not services.run_mark_running(run_id=run.id, image="local"):
            return {"status": Run.Status.CANCELED, "reason": "canceled before it started"}
        sandbox = local_sandbox()
        if not run.workspace.local_runs_enabled or sandbox is None:  # checked at submit too; settings may have changed
            reason = (services.LOCAL_RUNS_OFF.format(workspace=run.workspace.name) if sandbox is not None else
                      f"no Python on this worker that the local-run user (uid {settings.MLPORTAL_LOCAL_RUN_UID}) may "
                      "execute: set MLPORTAL_LOCAL_RUN_PYTHON, or use target docker")
            sink.log(f"[mlportal] error: {reason}")
            return {"status": Run.Status.FAILED, "reason": reason}

        def execute(store_output):
            return run_local(
                spec, sandbox=sandbox, wheel_cache=settings.MLPORTAL_WHEEL_CACHE,
                on_output=sink.output, should_cancel=sink.should_cancel, workdir=workdir, store_output=store_output,
            )
    # Outputs go straight into storage as the runner hands them over; all of them or none.
    writer = OutputsWriter(run)
    try:
        result = execute(writer.add)
    except BaseException:
        writer.abort()
        raise
    if result.outputs_failed:
        writer.abort()  # a cap or a full disk stopped the copy: a part is not what the script made
        outputs = []
    else:
        outputs = writer.commit()
    sink.log(f"[mlportal] run {result.status}{': ' + result.reason if result.reason else ''}"
             f" ({len(outputs)} output file{'s' if len(outputs) != 1 else ''}, {sink.metric_count} metric points)")
    return {"status": result.status, "reason": result.reason, "exit_code": result.exit_code, "oom": result.oom,
            "image": result.image or None}


def local_sandbox() -> LocalSandbox | None:
    """Where and as whom this worker runs local runs, from the settings; None when no interpreter
    the run user may execute is found."""
    uid = settings.MLPORTAL_LOCAL_RUN_UID
    candidates = [settings.MLPORTAL_LOCAL_RUN_PYTHON] if settings.MLPORTAL_LOCAL_RUN_PYTHON else [
        getattr(sys, "_base_executable", ""), sys.executable, "/usr/local/bin/python3", "/usr/bin/python3"]
    python = python_for_user(uid, candidates)
    if python is None:
        return None
    return LocalSandbox(uid=uid, root=settings.MLPORTAL_LOCAL_RUN_ROOT, python=python)


def sweep_lost_runs() -> dict:
    """Marks runs lost whose worker stopped sending heartbeats, and removes run containers whose run
    is finished (lost ones included). Returns {"lost": [...run ids], "removed": [...container ids]}.

    Only this portal's containers (label ``mlportal.portal``) are looked at: another portal sharing
    the engine keeps its own. Exited containers of this portal's runs that the database no longer
    knows are removed too; running ones are left alone.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.MLPORTAL_LOST_AFTER_SECONDS)
    stale = Run.objects.filter(status__in=[Run.Status.PREPARING, Run.Status.RUNNING], heartbeat_at__lt=cutoff)
    lost = []
    for run_id, beat in stale.values_list("id", "heartbeat_at"):
        reason = (f"lost: its worker stopped reporting (last heartbeat {beat:%Y-%m-%d %H:%M:%S} UTC, "
                  f"over {settings.MLPORTAL_LOST_AFTER_SECONDS} s ago)")
        if services.run_mark_lost(run_id=run_id, reason=reason):
            services.run_append_log(run_id=run_id, workspace_id=Run.objects.get(id=run_id).workspace_id,
                                    lines=[f"[mlportal] {reason}"])
            lost.append(str(run_id))
    removed = []
    try:
        containers = list_containers("run", base_url=settings.MLPORTAL_DOCKER_URL, portal=portal_instance())
    except EngineError as exc:
        logger.warning("sweep: cannot list run containers: %s", exc)
        return {"lost": lost, "removed": removed}
    ids = {c["labels"].get(LABEL_ID, "") for c in containers}
    known = {}
    valid = [i for i in ids if _is_uuid(i)]
    for run_id, status in Run.objects.filter(id__in=valid).values_list("id", "status"):
        known[str(run_id)] = status
    for container in containers:
        run_id = container["labels"].get(LABEL_ID, "")
        status = known.get(run_id)
        finished = status is not None and status not in Run.ACTIVE
        gone_and_stopped = status is None and container["status"] in ("exited", "dead")
        if finished or gone_and_stopped:
            try:
                remove_container(container["id"], base_url=settings.MLPORTAL_DOCKER_URL)
                removed.append(container["id"])
            except EngineError as exc:
                logger.warning("sweep: cannot remove container %s: %s", container["id"][:12], exc)
    return {"lost": lost, "removed": removed}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def requeue_lost_runs() -> dict:
    """Sends the task of queued runs again when the broker lost it: at once after the broker
    forgot its messages (a restart without persistence), else once a run has waited unclaimed
    longer than MLPORTAL_REQUEUE_AFTER_SECONDS, with a growing gap after that (see
    workspaces.broker). The claim in `execute` makes a duplicate start nothing. Returns
    {"resent": [...run ids], "broker_forgot": bool}."""
    from runs.tasks import execute_run
    from workspaces.broker import broker_forgot, resend_due

    forgot = broker_forgot("runs")
    now = timezone.now()
    after_s = settings.MLPORTAL_REQUEUE_AFTER_SECONDS
    queued = Run.objects.filter(status=Run.Status.QUEUED)
    if not forgot:
        queued = queued.filter(created_at__lt=now - timedelta(seconds=after_s))
    resent = []
    for run_id, created_at, sent_at in queued.values_list("id", "created_at", "heartbeat_at").order_by("created_at"):
        if not forgot and not resend_due(created_at=created_at, sent_at=sent_at, now=now, after_s=after_s):
            continue
        # For a queued run, heartbeat_at is when its task was last sent; the claim overwrites it.
        if Run.objects.filter(id=run_id, status=Run.Status.QUEUED).update(heartbeat_at=now):
            execute_run.delay(str(run_id))
            resent.append(str(run_id))
    if resent:
        logger.warning("re-sent the task of %d queued run(s) the broker had lost: %s", len(resent), ", ".join(resent))
    return {"resent": resent, "broker_forgot": forgot}
