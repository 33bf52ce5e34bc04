"""What a worker does with a run: claim it, prepare its environment, execute it through `compute`,
stream its log and metrics into the database, store its outputs and record how it ended. The
`run_*` row writes it makes are at the end (each takes a run id; state changes are guarded
updates). `runs.tasks.execute_run` calls `execute`; the periodic sweeps (lost runs, lost tasks)
are in `runs.reconcile`.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import sys
import tarfile
import threading
import time
from pathlib import Path

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from compute.engine import BuildError, EngineError
from compute.runner import LocalSandbox, RunSpec, python_for_user, run_in_docker, run_local
from core.errors import PortalError
from core.logs import next_seq
from core.paths import clean_path
from core.storage import chunks_of, delete_files, open_file, save_file
from mlportal_runtime import parse_line
from retention.envimages import env_image_prepare
from runs import checks
from runs.metrics import run_record_metrics
from runs.models import Run, RunLogChunk, RunOutput, Target, requirement_lines
from runs.outputs import OutputsWriter
from runs.services import run_log_params, run_set_tags
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
                for problem in run_log_params(run_id=self.run_id, workspace_id=self.workspace_id, params=params):
                    self.log(f"[mlportal] param not recorded: {problem}")
            if tags:
                run_set_tags(run_id=self.run_id, workspace_id=self.workspace_id, tags=tags)
            while True:
                with self._lock:
                    batch, self._metrics = self._metrics[:METRIC_BATCH], self._metrics[METRIC_BATCH:]
                if not batch:
                    break
                run_record_metrics(run_id=self.run_id, workspace_id=self.workspace_id, points=batch)
                with self._lock:
                    self._drained.notify_all()
            with self._lock:
                lines, self._lines = self._lines, []
            for start in range(0, len(lines), MAX_LINES_PER_CHUNK):
                run_append_log(run_id=self.run_id, workspace_id=self.workspace_id,
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
                        run_heartbeat(run_id=self.run_id)
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
    run = run_claim(run_id=run_id, worker=_worker_name())
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
    return run_finish(run_id=run.id, **outcome)


def prepare_charts(run_id) -> None:
    """Downsamples every series of a run that just ended and keeps the result — each series on its
    summary row and the page's whole answer gzipped (``runs.chart_cache``) — so its page never
    reads the raw points; a failure here only means the first page view computes them."""
    from runs import chart_cache

    try:
        chart_cache.whole_series_gzip(Run.objects.get(id=run_id))
    except Exception:  # noqa: BLE001 - a cache; the run's end must still be recorded
        logger.exception("run %s: preparing its charts failed", run_id)


def _prepare(run: Run, sink: RunSink) -> dict:
    sink.log(f"[mlportal] preparing the environment of project {run.project.name} for target docker")
    image = env_image_prepare(requirements=run.project.requirement_lines, log=sink.log)
    run_mark_running(run_id=run.id, image=image)
    sink.log(f"[mlportal] environment image {image} is ready")
    return {"status": Run.Status.COMPLETED, "image": image, "exit_code": 0}


def _execute_script(run: Run, sink: RunSink, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    snapshot = workdir / "snapshot.tar"
    with open_file(run.snapshot) as src, open(snapshot, "wb") as dst:
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
        image = env_image_prepare(requirements=spec.requirements, log=lambda line: sink.log(f"[prepare] {line}"))
        if not run_mark_running(run_id=run.id, image=image):
            return {"status": Run.Status.CANCELED, "reason": "canceled before it started", "image": image}
        already_said = f"[prepare] environment image {image} is ready (reused)"

        def on_output(line: str) -> None:
            # The runner checks the image again; the log already says it is ready.
            if line != already_said:
                sink.output(line)

        def execute(store_output):
            return run_in_docker(
                spec, wheel_cache=settings.MLPORTAL_WHEEL_CACHE, on_output=on_output, should_cancel=sink.should_cancel,
                on_container=lambda cid: run_set_container(run_id=run.id, container_id=cid),
                workdir=workdir, base_url=settings.MLPORTAL_DOCKER_URL, store_output=store_output,
            )
    else:
        if not run_mark_running(run_id=run.id, image="local"):
            return {"status": Run.Status.CANCELED, "reason": "canceled before it started"}
        sandbox = local_sandbox()
        if not run.workspace.local_runs_enabled or sandbox is None:  # checked at submit too; settings may have changed
            reason = (checks.LOCAL_RUNS_OFF.format(workspace=run.workspace.name) if sandbox is not None else
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


# --- the run's rows, written by the worker ----------------------------------------------------

ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
# Control characters other than tab are dropped from log lines (they could rewrite a terminal).
# C1 controls too (U+009B is a one-character CSI for some terminals), and the bidi and line
# separator characters that reorder or split what a reader sees.
CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def run_claim(*, run_id, worker: str) -> Run | None:
    """Moves a queued run to preparing; None when it is not queued (a duplicate delivery, a cancel)."""
    now = timezone.now()
    claimed = Run.objects.filter(id=run_id, status=Run.Status.QUEUED).update(
        status=Run.Status.PREPARING, started_at=now, heartbeat_at=now, worker=worker[:255],
    )
    if not claimed:
        return None
    return Run.objects.select_related("project", "workspace").get(id=run_id)


def run_mark_running(*, run_id, image: str) -> bool:
    return bool(Run.objects.filter(id=run_id, status=Run.Status.PREPARING).update(
        status=Run.Status.RUNNING, image=image[:255], heartbeat_at=timezone.now(),
    ))


def run_heartbeat(*, run_id) -> str | None:
    """Stamps the heartbeat of an active run and returns its status (None when it is gone)."""
    Run.objects.filter(id=run_id, status__in=[Run.Status.PREPARING, Run.Status.RUNNING]).update(heartbeat_at=timezone.now())
    return Run.objects.filter(id=run_id).values_list("status", flat=True).first()


def run_set_container(*, run_id, container_id: str) -> None:
    Run.objects.filter(id=run_id).update(container_id=container_id[:80])


def clean_log_line(line: str | bytes) -> str:
    """A log line safe to show: UTF-8 (bad bytes replaced), no ANSI escapes or control characters."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    return CONTROL_RE.sub("", ANSI_RE.sub("", line))


def run_append_log(*, run_id, workspace_id, lines: list[str]) -> None:
    """Appends lines to the run's log as one chunk, up to MLPORTAL_LOG_MAX_BYTES; past it, one
    visible "[log truncated…]" note is written and later lines are dropped."""
    if not lines:
        return
    cap = settings.MLPORTAL_LOG_MAX_BYTES
    with transaction.atomic():
        row = Run.objects.filter(id=run_id).values("log_bytes", "log_truncated").first()
        if row is None or row["log_truncated"]:
            return
        used = row["log_bytes"]
        kept: list[str] = []
        truncated = False
        for line in lines:
            text = clean_log_line(line) + "\n"
            size = len(text.encode())
            if used + size > cap:
                truncated = True
                break
            kept.append(text)
            used += size
        if truncated:
            kept.append(f"[log truncated: the log reached its limit of {cap} bytes; later lines were dropped]\n")
        if not kept:
            return
        seq = next_seq(RunLogChunk.objects.filter(run_id=run_id))
        RunLogChunk.objects.create(run_id=run_id, workspace_id=workspace_id, seq=seq, text="".join(kept))
        Run.objects.filter(id=run_id).update(log_bytes=used, log_truncated=truncated)


def run_store_outputs(*, run: Run, tar_path: Path | None) -> list[RunOutput]:
    """Stores each regular file of the outputs tar (paths relative to outputs/) as a RunOutput."""
    if tar_path is None or not Path(tar_path).exists():
        return []
    written, rows = [], []
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                try:
                    path = clean_path(info.name)
                except PortalError:
                    logger.warning("run %s: skipped output with unsafe path %r", run.id, info.name)
                    continue
                output = RunOutput(run=run, workspace_id=run.workspace_id, path=path)
                blob = save_file(f"runs/{run.id}/outputs/{output.id}", chunks_of(tar.extractfile(info)))
                written.append(blob.storage_name)
                output.storage_name, output.size, output.sha256 = blob.storage_name, blob.size, blob.sha256
                rows.append(output)
        with transaction.atomic():
            RunOutput.objects.filter(run=run).delete()
            RunOutput.objects.bulk_create(rows)
    except BaseException:
        delete_files(written)
        raise
    return rows


def run_finish(*, run_id, status: str, reason: str = "", exit_code: int | None = None, oom: bool = False, image: str | None = None) -> str:
    """Records the end of a run and returns its final status.

    The update is guarded on the active states; a run canceled meanwhile keeps `canceled` (its exit
    code and end time are still filled in), a run swept to `lost` stays lost."""
    now = timezone.now()
    fields = {"exit_code": exit_code, "oom": oom, "heartbeat_at": now}
    if image:
        fields["image"] = image[:255]
    done = Run.objects.filter(id=run_id, status__in=[Run.Status.PREPARING, Run.Status.RUNNING]).update(
        status=status, status_reason=reason[:2000], ended_at=now, **fields
    )
    if not done:
        Run.objects.filter(id=run_id, status=Run.Status.CANCELED).update(**fields)
    current = Run.objects.filter(id=run_id).values_list("status", flat=True).first()
    return current or status


def run_mark_lost(*, run_id, reason: str) -> bool:
    return bool(Run.objects.filter(id=run_id, status__in=[Run.Status.PREPARING, Run.Status.RUNNING]).update(
        status=Run.Status.LOST, status_reason=reason[:2000], ended_at=timezone.now(),
    ))
