"""Executing a run: in a fresh Docker container (``-c docker``) or a local process (``-c local``).

Both runners share one contract: the project snapshot is copied in, ``python <script> <args>``
runs with limits, stdout/stderr lines go to ``on_output`` as they come (without the newline),
the run is killed on its time limit or when ``should_cancel()`` turns true, and the files the
script wrote under ``outputs/`` come back as a tar with paths relative to ``outputs/``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import errno
import tarfile
from typing import IO

import docker.errors
import docker.types

from compute import _archive
from compute.engine import (
    ENGINE_EXCEPTIONS,
    LABEL_ID,
    LABEL_KIND,
    LABEL_PORTAL,
    BuildError,
    connect,
    container_log_config,
    engine_errors,
)
from compute.envimage import RUN_UID, RUN_USER, ensure_env_image, runtime_package_dirs, runtime_site_file
from compute.network import RUN_NETWORK, ensure_network
from compute.wheels import ensure_wheels, file_lock, normalise_requirements, offline_pip_env

logger = logging.getLogger(__name__)

WORKDIR = "/workspace"
POLL_S = 0.5
STREAM_GRACE_S = 3.0
# Lines between the readers and the consumer: a full queue stops the readers, so a script printing
# faster than the worker stores waits on its stdout instead of the worker buffering its output.
LINE_QUEUE_MAX = 10_000
MAX_LINE_BYTES = 64 * 1024
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class RunSpec:
    run_id: str
    snapshot: Path  # a .tar of the project files
    script: str
    args: list[str]
    requirements: list[str]
    base_image: str
    memory_mb: int = 2048
    cpus: float = 1.0
    pids: int = 256
    timeout_s: int = 3600
    network: bool = False
    env: dict[str, str] = field(default_factory=dict)
    portal: str = ""  # the portal instance's id, put on the container as LABEL_PORTAL
    # Bounds on what a run may write (None: unbounded): the total size of outputs/ copied back,
    # /tmp (a tmpfs of this size, charged to the run's memory too) and the container's writable
    # layer (the project folder and anything else outside /tmp), checked while it runs.
    outputs_max_bytes: int | None = None
    tmp_mb: int | None = None
    scratch_max_bytes: int | None = None


# store_output(path relative to outputs/, size, readable stream): keeps one output file.
StoreOutput = Callable[[str, int, IO[bytes]], None]
# The writable layer's bound, strongest first: the engine's own size limit on the layer
# (``--storage-opt size``: overlay2 on xfs with pquota, btrfs, zfs; refused by overlay2 on ext4,
# as on the machines this is tested on), then the kernel's limit on the size of one file
# (RLIMIT_FSIZE, every engine: a write past it fails with EFBIG, so one runaway file never
# passes the bound), then this poll of the layer's size (SizeRw) for many files together.
SCRATCH_CHECK_S = 1.0
_STORAGE_OPT_REFUSED = "--storage-opt is supported only"
_storage_opt_support: dict[str | None, bool] = {}  # per engine: does it accept --storage-opt size?
_FILE_TOO_LARGE = ("File too large", "[Errno 27]")  # EFBIG's text in the run's log
SIGXFSZ_EXIT = 128 + signal.SIGXFSZ  # a program that does not ignore SIGXFSZ (Python does) dies of it


class OutputsOverCap(Exception):
    """The run's outputs are larger than its cap: nothing of them is kept."""


class DiskFull(Exception):
    """Storing the run's outputs hit a full disk."""


@dataclass
class RunResult:
    status: str  # "completed" | "failed" | "timed_out" | "canceled"
    exit_code: int | None
    reason: str  # human message, "" on success
    oom: bool
    outputs: Path | None  # a .tar of outputs/ (paths relative to outputs/), None if none
    image: str
    outputs_failed: bool = False  # copying outputs back stopped (cap, disk full): keep none of them


def _check_spec(spec: RunSpec) -> None:
    """Raises ValueError when the script path or an environment variable name is unusable."""
    script = _archive.clean_relative_path(spec.script)
    if script.startswith("-"):
        raise ValueError(f"script {spec.script!r} must be a file of the project")
    for name in spec.env:
        if not ENV_NAME_RE.match(name):
            raise ValueError(f"environment variable name {name!r} is not valid")
    if spec.memory_mb < 16 or spec.cpus <= 0 or spec.pids < 8 or spec.timeout_s <= 0:
        raise ValueError("memory_mb, cpus, pids and timeout_s must be positive (memory >= 16 MiB)")


def _exit_reason(exit_code: int | None) -> str:
    if exit_code is None:
        return "ended without an exit code"
    if exit_code < 0:
        try:
            return f"killed by signal {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    if exit_code == 137:
        return "exited with code 137 (killed)"
    return f"exited with code {exit_code}"


class _Lines:
    """Splits byte chunks of one stream into decoded lines (a partial last line on flush)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[str]:
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        # A script that never ends its line must not grow this buffer without bound.
        while len(self._rest) > MAX_LINE_BYTES:
            lines.append(self._rest[:MAX_LINE_BYTES])
            self._rest = self._rest[MAX_LINE_BYTES:]
        return [_decode(line) for line in lines]

    def flush(self) -> list[str]:
        rest, self._rest = self._rest, b""
        return [_decode(rest)] if rest else []


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r")


_DONE = object()


def _pump(put: Callable[[object], None], frames: Iterable[tuple[int, bytes]]) -> None:
    """Reads ``(stream number, bytes)`` frames and puts complete lines, kept apart per stream
    so a partial stdout line never merges with stderr; puts the partial rests at the end."""
    splitters: dict[int, _Lines] = {}
    try:
        for stream_no, chunk in frames:
            if chunk:
                for line in splitters.setdefault(stream_no, _Lines()).feed(chunk):
                    put(line)
    except Exception as exc:  # noqa: BLE001 - the run goes on; the loss is reported in the log
        put(f"[mlportal] log stream interrupted: {exc}")
    finally:
        for splitter in splitters.values():
            for line in splitter.flush():
                put(line)


def _start_readers(sources: list[Iterable[tuple[int, bytes]]], lines: queue.Queue) -> list[threading.Thread]:
    """Starts one reader thread per source; ``_DONE`` is queued once all of them have ended."""
    remaining = [len(sources)]
    lock = threading.Lock()

    def read(frames: Iterable[tuple[int, bytes]]) -> None:
        _pump(lines.put, frames)
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                lines.put(_DONE)

    threads = [threading.Thread(target=read, args=(src,), daemon=True, name="run-output")
               for src in sources]
    for thread in threads:
        thread.start()
    return threads


def _supervise(*, lines: queue.Queue, on_output: Callable[[str], None],
               should_cancel: Callable[[], bool], timeout_s: int, is_running: Callable[[], bool],
               kill: Callable[[], None], close_stream: Callable[[], None] = lambda: None,
               started: float | None = None, over_scratch: Callable[[], bool] = lambda: False) -> str | None:
    """Delivers queued lines to ``on_output`` until the output has ended and the process is
    gone; kills it on ``timeout_s`` (counted from ``started``) or a cancel (polled every
    ``POLL_S``), or once ``over_scratch()`` (polled every ``SCRATCH_CHECK_S``) is true. A stream
    still open ``STREAM_GRACE_S`` after the process ended is closed (a grandchild holding the
    pipe, a stuck attach); the grace counts from the last line delivered, so a backlog still
    being delivered after the process ended is never cut. Returns "timed_out", "canceled",
    "over_scratch" or None."""
    deadline = (started if started is not None else time.monotonic()) + timeout_s
    next_check = 0.0
    next_scratch_check = 0.0
    verdict: str | None = None
    stream_done = False
    gone_at: float | None = None
    closed = False
    last_item = 0.0
    while True:
        try:
            item = lines.get(timeout=POLL_S)
        except queue.Empty:
            item = None
        if item is _DONE:
            stream_done = True
        elif item is not None:
            on_output(item)
            last_item = time.monotonic()
        now = time.monotonic()
        if verdict is None and now >= deadline:
            verdict = "timed_out"
            kill()
        if now >= next_check or stream_done:
            next_check = now + POLL_S
            if verdict is None and should_cancel():
                verdict = "canceled"
                kill()
            if verdict is None and gone_at is None and now >= next_scratch_check:
                next_scratch_check = now + SCRATCH_CHECK_S
                if over_scratch():
                    verdict = "over_scratch"
                    kill()
            if gone_at is None and not is_running():
                gone_at = now
        if gone_at is None:
            continue
        if stream_done:
            return verdict
        quiet = now - max(gone_at, last_item)
        if not closed and quiet > STREAM_GRACE_S:
            close_stream()
            closed = True
        elif quiet > STREAM_GRACE_S + 5:
            on_output("[mlportal] the output stream did not end; some last lines may be missing")
            return verdict


def _over_scratch_reason(scratch_max_bytes: int | None) -> str:
    return (f"wrote more than its scratch space of {_mib(scratch_max_bytes)} "
            "(files outside /tmp, the project folder included): write less, or raise the bound")


def _result_for(verdict: str | None, *, exit_code: int | None, oom: bool, memory_mb: int,
                timeout_s: int, outputs: Path | None, image: str, scratch_max_bytes: int | None = None,
                file_too_large: bool = False) -> RunResult:
    if verdict == "over_scratch":
        return RunResult("failed", exit_code, _over_scratch_reason(scratch_max_bytes), False, outputs, image)
    if file_too_large and scratch_max_bytes and exit_code not in (0, None) and verdict is None:
        return RunResult("failed", exit_code, _over_scratch_reason(scratch_max_bytes), oom, outputs, image)
    if verdict == "timed_out":
        return RunResult("timed_out", exit_code, f"over its time limit of {timeout_s} s", False,
                         outputs, image)
    if verdict == "canceled":
        return RunResult("canceled", exit_code, "canceled", False, outputs, image)
    if oom and exit_code != 0:
        return RunResult("failed", exit_code, f"out of memory (limit {memory_mb} MiB)", True,
                         outputs, image)
    if exit_code == 0:
        return RunResult("completed", 0, "", oom, outputs, image)
    return RunResult("failed", exit_code, _exit_reason(exit_code), oom, outputs, image)


def _mib(size: int | None) -> str:
    return f"{(size or 0) / (1024 * 1024):g} MiB"


# --- Docker -------------------------------------------------------------------------------------

def _container_name(run_id: str) -> str:
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", run_id)[:40].strip("-.") or "run"
    return f"mlportal-run-{safe}-{secrets.token_hex(3)}"


def run_in_docker(spec: RunSpec, *, wheel_cache: Path, on_output: Callable[[str], None],
                  should_cancel: Callable[[], bool],
                  on_container: Callable[[str], None] = lambda cid: None, workdir: Path,
                  base_url: str | None = None, store_output: StoreOutput | None = None) -> RunResult:
    """Runs ``spec`` in a fresh container of its environment image and returns the result.

    Prepares the environment image first (its log goes to ``on_output`` prefixed with
    ``[prepare]``); a requirement pip cannot resolve or a failed image build gives a "failed"
    result whose reason says why. The container runs as ``mlportal`` with the spec's limits,
    no network unless ``spec.network``, no mounts, and only ``spec.env`` + PYTHONUNBUFFERED
    added to the image's environment; ``on_container`` gets its id right after it is created.

    With ``store_output``, the files under ``outputs/`` stream from the engine straight to it,
    one by one (no copy on the worker's disk) and ``outputs`` of the result is None; past
    ``spec.outputs_max_bytes`` the copy stops and the run fails with the cap named; a full disk
    (OSError ENOSPC from ``store_output``) closes the stream and fails the run with "disk full".
    Without it, they come back as a tar at ``workdir/outputs.tar``.
    The container is removed in every case. Raises EngineError when the engine fails and
    ValueError for an unusable spec."""
    _check_spec(spec)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        image = ensure_env_image(base_image=spec.base_image, requirements=spec.requirements,
                                 wheel_cache=wheel_cache, base_url=base_url,
                                 log=lambda line: on_output(f"[prepare] {line}"))
    except BuildError as exc:  # the build log has already gone to on_output line by line
        on_output(f"[prepare] error: {exc}")
        return RunResult("failed", None, f"environment preparation failed: {exc}", False, None,
                         "")
    if should_cancel():
        return RunResult("canceled", None, "canceled", False, None, image)

    with connect(base_url, timeout=300) as client:
        container = None
        try:
            container = _create_run_container(
                client, spec, base_url=base_url,
                image=image,
                command=["python", spec.script, *spec.args],
                name=_container_name(spec.run_id),
                user=RUN_USER,
                working_dir=WORKDIR,
                environment={**spec.env, "PYTHONUNBUFFERED": "1"},
                labels={LABEL_KIND: "run", LABEL_ID: spec.run_id,
                        **({LABEL_PORTAL: spec.portal} if spec.portal else {})},
                mem_limit=f"{spec.memory_mb}m",
                memswap_limit=f"{spec.memory_mb}m",
                nano_cpus=int(spec.cpus * 1e9),
                pids_limit=spec.pids,
                # A run the project lets use the network gets the isolated runs bridge: it
                # reaches the internet, never another container or the host's services.
                network_mode=ensure_network(RUN_NETWORK, base_url=base_url) if spec.network else "none",
                log_config=container_log_config(),
                tmpfs={"/tmp": f"size={spec.tmp_mb}m,mode=1777"} if spec.tmp_mb else None,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                restart_policy={"Name": "no"},
                stdin_open=False,
                tty=False,
            )
            on_container(container.id)
            with _archive.snapshot_for_container(spec.snapshot, uid=RUN_UID, gid=RUN_UID) as tar:
                container.put_archive(WORKDIR, tar)
            saw = {"efbig": False}

            def watch(line: str) -> None:
                if not saw["efbig"] and any(text in line for text in _FILE_TOO_LARGE):
                    saw["efbig"] = True
                on_output(line)

            verdict = _follow_container(container.id, spec=spec, on_output=watch,
                                        should_cancel=should_cancel, base_url=base_url,
                                        client=client)
            state = client.api.inspect_container(container.id)["State"]
            exit_code = state.get("ExitCode")
            result = _result_for(verdict, exit_code=exit_code, oom=bool(state.get("OOMKilled")),
                                 memory_mb=spec.memory_mb, timeout_s=spec.timeout_s,
                                 outputs=None, image=image, scratch_max_bytes=spec.scratch_max_bytes,
                                 file_too_large=saw["efbig"] or exit_code == SIGXFSZ_EXIT)
            if store_output is None:
                result.outputs = _copy_outputs(client, container.id, workdir / "outputs.tar")
                return result
            try:
                stored = _stream_outputs(client, container.id, store=store_output,
                                         max_bytes=spec.outputs_max_bytes)
            except (OutputsOverCap, DiskFull) as exc:
                return RunResult("failed", exit_code, str(exc), result.oom, None, image, outputs_failed=True)
            if stored:
                on_output(f"[mlportal] stored {stored[0]} output file{'s' if stored[0] != 1 else ''} ({stored[1]} bytes)")
            return result
        finally:
            if container is not None:
                _remove_quietly(client, container.id)


def _create_run_container(client, spec: RunSpec, *, base_url: str | None, **kwargs):
    """Creates the run's container with its writable layer bounded as hard as the engine allows
    (see SCRATCH_CHECK_S): ``--storage-opt size`` where the engine accepts it (asked once per
    engine: the refusal is remembered), and RLIMIT_FSIZE on every file in any case."""
    if spec.scratch_max_bytes:
        kwargs["ulimits"] = [docker.types.Ulimit(name="fsize", soft=spec.scratch_max_bytes, hard=spec.scratch_max_bytes)]
        if _storage_opt_support.get(base_url, True):
            try:
                container = client.containers.create(storage_opt={"size": str(spec.scratch_max_bytes)}, **kwargs)
            except docker.errors.APIError as exc:
                if _STORAGE_OPT_REFUSED not in str(exc):
                    raise
                _storage_opt_support[base_url] = False
                logger.info("engine %s refuses --storage-opt size (%s): run layers are bounded per file and polled",
                            base_url or "local", exc.explanation or exc)
            else:
                _storage_opt_support[base_url] = True
                return container
    return client.containers.create(**kwargs)


def _follow_container(container_id: str, *, spec: RunSpec, on_output, should_cancel,
                      base_url: str | None, client) -> str | None:
    """Starts the container and supervises it; returns the verdict of _supervise."""
    # Attach before start (as `docker run` does) so no line is missed. The stream has its own
    # client: its socket stays open for the whole run, so its read timeout outlasts the limit.
    with connect(base_url, timeout=spec.timeout_s + 120) as log_client:
        stream = log_client.api.attach(container_id, stdout=True, stderr=True, stream=True,
                                       logs=False, demux=True)
        readers: list[threading.Thread] = []
        try:
            frames = ((1, out) if out else (2, err) for out, err in stream)
            lines: queue.Queue = queue.Queue(maxsize=LINE_QUEUE_MAX)
            readers = _start_readers([frames], lines)
            client.api.start(container_id)
            started = time.monotonic()

            def is_running() -> bool:
                with engine_errors(base_url):
                    return bool(client.api.inspect_container(container_id)["State"]["Running"])

            def kill() -> None:
                try:
                    client.api.kill(container_id)
                except docker.errors.APIError as exc:  # already stopped: nothing to kill
                    if exc.status_code not in (404, 409):
                        raise

            def over_scratch() -> bool:
                if not spec.scratch_max_bytes:
                    return False
                # SizeRw: what the container wrote outside its mounts (/tmp is a tmpfs).
                with engine_errors(base_url):  # docker-py's inspect_container has no size option
                    url = client.api._url("/containers/{0}/json", container_id)
                    size = client.api._result(client.api._get(url, params={"size": 1}), True).get("SizeRw") or 0
                return size > spec.scratch_max_bytes

            with engine_errors(base_url):
                return _supervise(lines=lines, on_output=on_output, should_cancel=should_cancel,
                                  timeout_s=spec.timeout_s, is_running=is_running, kill=kill,
                                  close_stream=stream.close, started=started, over_scratch=over_scratch)
        finally:
            stream.close()
            for reader in readers:
                reader.join(timeout=5)


def _stream_outputs(client, container_id: str, *, store: StoreOutput,
                    max_bytes: int | None) -> tuple[int, int]:
    """Streams the regular files of ``/workspace/outputs`` of a stopped container to ``store``,
    reading the engine's tar as it arrives; returns (files, bytes). Raises OutputsOverCap as soon
    as the sizes in the tar headers pass ``max_bytes`` (before that file is stored), DiskFull
    when ``store`` hits a full disk; the stream is closed in every case, so removing the
    container never waits on it."""
    # docker-py's get_archive hands back a generator over the response and never closes it;
    # here the response is ours, read as a file and closed on the way out.
    url = client.api._url("/containers/{0}/archive", container_id)
    response = client.api._get(url, params={"path": f"{WORKDIR}/outputs"}, stream=True,
                               headers={"Accept-Encoding": "identity"})
    try:
        if response.status_code == 404:
            return 0, 0
        client.api._raise_for_status(response)
        files = total = 0
        with tarfile.open(fileobj=response.raw, mode="r|") as src:
            for member in src:
                name = member.name.removeprefix("./")
                if not member.isfile() or not name.startswith("outputs/"):
                    continue
                try:
                    rel = _archive.clean_relative_path(name[len("outputs/"):])
                except _archive.UnsafePath:
                    continue
                total += member.size
                if max_bytes is not None and total > max_bytes:
                    raise OutputsOverCap(
                        f"its outputs are over the cap of {_mib(max_bytes)} (at {rel}, {_mib(total)} so far): "
                        "write less under outputs/, or raise the project's outputs cap")
                try:
                    store(rel, member.size, src.extractfile(member))
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise DiskFull(f"disk full: the portal's storage has no room for its outputs "
                                       f"(at {rel}); free space or ask an operator") from exc
                    raise
                files += 1
        return files, total
    finally:
        response.close()


def _store_directory(root: Path, *, store: StoreOutput, max_bytes: int | None) -> tuple[int, int]:
    """Hands the regular files under ``root`` (symlinks left out, never followed) to ``store``;
    returns (files, bytes). Raises OutputsOverCap before storing anything when their total is
    over ``max_bytes``, DiskFull when ``store`` hits a full disk."""
    if not root.is_dir() or root.is_symlink():
        return 0, 0
    found: list[tuple[str, Path, int]] = []
    for folder, dirs, names in os.walk(root):  # does not descend into symlinked folders
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            found.append((path.relative_to(root).as_posix(), path, path.stat().st_size))
    total = sum(size for _, _, size in found)
    if max_bytes is not None and total > max_bytes:
        raise OutputsOverCap(f"its outputs are over the cap of {_mib(max_bytes)} ({_mib(total)}): "
                             "write less under outputs/, or raise the project's outputs cap")
    for rel, path, size in found:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # replaced by a symlink or removed since: not an output
            continue
        with os.fdopen(fd, "rb") as handle:
            try:
                store(rel, size, handle)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DiskFull(f"disk full: the portal's storage has no room for its outputs "
                                   f"(at {rel}); free space or ask an operator") from exc
                raise
    return len(found), total


def _copy_outputs(client, container_id: str, dest: Path) -> Path | None:
    """Copies ``/workspace/outputs`` of a stopped container to ``dest``; None when missing or empty."""
    try:
        chunks, _stat = client.api.get_archive(container_id, f"{WORKDIR}/outputs")
    except docker.errors.NotFound:
        return None
    with tempfile.TemporaryFile(dir=dest.parent) as raw:
        for chunk in chunks:
            raw.write(chunk)
        raw.seek(0)
        return _archive.repack_outputs(raw, prefix="outputs", dest=dest)


def _remove_quietly(client, container_id: str) -> None:
    try:
        client.api.remove_container(container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except ENGINE_EXCEPTIONS as exc:  # the sweeper removes what is left by label
        logger.warning("could not remove container %s: %s", container_id[:12], exc)


def remove_container(container_id: str, *, base_url: str | None = None) -> None:
    """Removes a container, running or not, with its anonymous volumes; a missing one is fine."""
    with connect(base_url) as client:
        try:
            client.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass


def list_containers(kind: str, *, base_url: str | None = None, portal: str | None = None,
                    owner_id: str | None = None) -> list[dict]:
    """Returns the product's containers labelled ``mlportal.kind=<kind>`` (and, when ``portal`` is
    given, ``mlportal.portal=<portal>``: that portal's only; when ``owner_id`` is given,
    ``mlportal.id=<owner_id>``: one run's or service's), stopped ones too:
    ``{"id", "name", "status", "labels", "running"}`` each. Ids are only unique within a portal:
    what removes a run's or a service's containers passes both."""
    labels = ([f"{LABEL_KIND}={kind}"] + ([f"{LABEL_PORTAL}={portal}"] if portal else [])
              + ([f"{LABEL_ID}={owner_id}"] if owner_id else []))
    with connect(base_url) as client:
        found = client.api.containers(all=True, filters={"label": labels})
    return [
        {
            "id": item["Id"],
            "name": (item.get("Names") or ["/"])[0].lstrip("/"),
            "status": item.get("State", ""),  # created, running, exited, dead...
            "labels": item.get("Labels") or {},
            "running": item.get("State") == "running",
        }
        for item in found
    ]


# --- local process ------------------------------------------------------------------------------
#
# A local run is a process on the worker's host, so it gets what a container would not give it by
# default: another user. The worker (root) prepares a private working copy owned by a dedicated
# uid that owns nothing else, starts the process in its own network and mount namespaces with a
# fresh tmpfs over /run (the Docker, PostgreSQL and Redis sockets live there), and the launcher
# drops to that uid, with no supplementary groups, before the script's interpreter starts. The
# data folder (0700), the worker's home and configuration are not readable by that uid; the
# environment is built from scratch.


@dataclass
class LocalSandbox:
    """Where and as whom local runs execute. ``root`` holds the virtualenvs (readable by all) and
    the per-run working copies (0700, owned by ``uid``); it must lie outside the data folder.
    ``python`` is an interpreter the run user may execute (the worker's may sit in a home folder
    it cannot enter)."""

    uid: int
    root: Path
    python: str


def _venv_for(requirements: list[str], *, venv_root: Path, wheel_cache: Path, python: str,
              on_output: Callable[[str], None]) -> Path:
    """Returns a virtualenv of ``python`` holding ``requirements``, made once per requirement set
    (and interpreter) under ``venv_root`` and reused after."""
    reqs = normalise_requirements(requirements)
    key = hashlib.sha256("\n".join([python, _python_version(python), *reqs]).encode()).hexdigest()[:16]
    venv = venv_root / key
    ready = venv / ".mlportal-ready"
    if ready.exists():
        return venv
    with file_lock(venv_root / f".{key}.lock"):
        if ready.exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        on_output(f"[prepare] creating virtualenv {venv}")
        wheels = ensure_wheels(reqs, cache_dir=wheel_cache,
                               log=lambda line: on_output(f"[prepare] {line}"))
        _check_call([python, "-m", "venv", "--without-pip", str(venv)], on_output)
        if wheels:
            # The portal's own pip installs into the new venv (--python), offline, exactly the
            # wheels the resolver chose (wheels only: no package code runs while installing).
            _check_call([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                         "install", "--no-index", "--no-deps", "--no-cache-dir", "--only-binary", ":all:",
                         *map(str, wheels)], on_output, env=offline_pip_env())
        ready.write_text("\n".join(reqs) + "\n")
    return venv


_versions: dict[str, str] = {}


def _python_version(python: str) -> str:
    if python not in _versions:
        done = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                              timeout=30)
        _versions[python] = done.stdout.strip()
    return _versions[python]


def _check_call(cmd: list[str], on_output: Callable[[str], None], env=None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    for line in (proc.stdout + proc.stderr).splitlines():
        on_output(f"[prepare] {line}")
    if proc.returncode != 0:
        raise BuildError(f"preparing the local environment failed: {cmd[2]} exited with "
                         f"{proc.returncode}", step=" ".join(cmd[:4]),
                         log_tail=(proc.stdout + proc.stderr)[-4000:])


def python_for_user(uid: int, candidates: Iterable[str]) -> str | None:
    """Returns the first interpreter of ``candidates`` (same minor version as the worker's) that a
    process of ``uid`` with no groups can execute, every folder on its way included; None if none."""
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate)
        try:
            real = path.resolve(strict=True)
        except OSError:
            continue
        if not all(_others_may(p, 0o001) for p in [*real.parents]) or not _others_may(real, 0o005):
            continue
        if not all(_others_may(p, 0o001) for p in path.parents):
            continue
        done = subprocess.run([str(path), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                              capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip() == want:
            return str(path)
    return None


def _others_may(path: Path, bits: int) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return mode & bits == bits


# Runs as root inside the run's network and mount namespaces: hides /run (sockets) under a fresh
# tmpfs, sets the limits, leaves every group and becomes the run's uid, then becomes the script's
# interpreter (exec keeps the limits). A launcher instead of preexec_fn, which is unsafe in a
# threaded worker. Any failure before the exec ends the launcher with code 126, saying why.
_LAUNCHER = (
    "import ctypes, math, os, resource, sys\n"
    "limit, cpus, offset, uid, nproc = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])\n"
    "try:\n"
    "    libc = ctypes.CDLL(None, use_errno=True)\n"
    "    for folder in ('/run', '/var/run', '/dev/shm'):\n"
    "        if os.path.isdir(folder) and not os.path.islink(folder):\n"
    "            if libc.mount(b'tmpfs', folder.encode(), b'tmpfs', 0, b'mode=755,size=1m') != 0:\n"
    "                raise OSError(ctypes.get_errno(), 'mount tmpfs on ' + folder)\n"
    "    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
    "    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))\n"
    "    mine = sorted(os.sched_getaffinity(0))\n"
    "    want = max(1, math.ceil(cpus))\n"
    "    if want < len(mine):  # a window of the worker's CPUs, starting where the run's offset says\n"
    "        start = offset % len(mine)\n"
    "        os.sched_setaffinity(0, [mine[(start + i) % len(mine)] for i in range(want)])\n"
    "    os.setgroups([])\n"
    "    os.setresgid(uid, uid, uid)\n"
    "    os.setresuid(uid, uid, uid)\n"
    "    if os.getuid() != uid or os.geteuid() != uid or os.getgroups():\n"
    "        raise OSError('the privileges did not drop')\n"
    "except OSError as exc:\n"
    "    sys.stderr.write(f'[mlportal] cannot isolate the local run: {exc}\\n')\n"
    "    sys.exit(126)\n"
    "os.execv(sys.argv[6], sys.argv[6:])\n"
)

_isolation: tuple[str, ...] | None = None


def isolation_prefix() -> tuple[str, ...] | None:
    """The command prefix that starts a process in network and mount namespaces of its own
    (``unshare --net --mount --propagation private``), when util-linux's unshare is there and this
    worker is root and may create namespaces (a container under Docker's default seccomp profile
    may not). None otherwise. Only a success is remembered, so a probe that failed on a busy
    moment is tried again next time."""
    global _isolation
    if _isolation is not None:
        return _isolation
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return None
    prefix = (unshare, "--net", "--mount", "--propagation", "private", "--")
    try:
        done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    _isolation = prefix
    return prefix


def _chunks(stream, number: int):
    with stream:
        while chunk := stream.read1(65536):
            yield number, chunk


def _private_dir(path: Path, mode: int = 0o755) -> Path:
    """Makes ``path`` (and parents) as root with ``mode``; refuses one that is a symlink or
    belongs to someone else (a run user must not plant it)."""
    path.mkdir(parents=True, exist_ok=True)
    info = path.lstat()
    if path.is_symlink() or info.st_uid != os.geteuid():
        raise BuildError(f"{path} is not a folder of the worker's own: remove it", step="prepare local run")
    path.chmod(mode)
    return path


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid, follow_symlinks=False)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(Path(folder) / name, uid, uid, follow_symlinks=False)


def run_local(spec: RunSpec, *, sandbox: LocalSandbox, wheel_cache: Path,
              on_output: Callable[[str], None], should_cancel: Callable[[], bool],
              workdir: Path, store_output: StoreOutput | None = None) -> RunResult:
    """Runs ``spec`` as a local process of ``sandbox.uid`` in a cached virtualenv and returns the result.

    The snapshot is extracted into a private working copy under ``sandbox.root`` (0700, owned by
    the run's uid; removed afterwards; the outputs tar lands at ``workdir/outputs.tar``). The
    process gets only PATH, HOME, LANG, PYTHONPATH (the runtime packages), PYTHONUNBUFFERED and
    ``spec.env``; its own process group (killed whole on timeout or cancel); network and mount
    namespaces of its own with /run hidden, unless ``network`` (then the host's network, /run
    still hidden); an address-space limit of ``memory_mb``, at most ``pids`` processes of its uid,
    and at most ``ceil(cpus)`` CPUs. A worker that cannot provide this (not root, no unshare) fails
    the run before it starts, saying so. With ``store_output``, the files under ``outputs/`` go to
    it one by one instead of into a tar (the same cap and "disk full" ends as ``run_in_docker``;
    the cap is checked before anything is stored). Raises ValueError for an unusable spec."""
    _check_spec(spec)
    isolation = isolation_prefix()
    if isolation is None:
        reason = ("this worker cannot isolate local runs (it must run as root, with util-linux's unshare and "
                  "namespaces allowed, to start them as an unprivileged user): use target docker")
        on_output(f"[mlportal] error: {reason}")
        return RunResult("failed", None, reason, False, None, "local")
    prefix = isolation if not spec.network else (isolation[0], "--mount", "--propagation", "private", "--")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        _private_dir(sandbox.root)
        venv = _venv_for(spec.requirements, venv_root=_private_dir(sandbox.root / "venvs"), wheel_cache=wheel_cache,
                         python=sandbox.python, on_output=on_output)
        work_root = _private_dir(sandbox.root / "work", 0o711)
    except BuildError as exc:
        on_output(f"[prepare] error: {exc}")
        return RunResult("failed", None, f"environment preparation failed: {exc}", False, None,
                         "local")
    image = f"local:{venv.name}"
    if should_cancel():
        return RunResult("canceled", None, "canceled", False, None, image)

    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=work_root))
    try:
        project, home, lib = scratch / "workspace", scratch / "home", scratch / "lib"
        for folder in (project, home, lib):
            folder.mkdir()
        _archive.extract_snapshot(spec.snapshot, project)
        for root in runtime_package_dirs():
            shutil.copytree(root, lib / root.name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copyfile(runtime_site_file(), lib / "sitecustomize.py")  # the mlflow shim, after site-packages
        _chown_tree(scratch, sandbox.uid)
        scratch.chmod(0o700)
        env = {
            "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(home),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(lib),
            "VIRTUAL_ENV": str(venv),
            **spec.env,
            "PYTHONUNBUFFERED": "1",
        }
        python = str(venv / "bin" / "python")
        proc = subprocess.Popen(
            [*prefix, python, "-c", _LAUNCHER, str(spec.memory_mb * 1024 * 1024), str(spec.cpus),
             str(int(hashlib.sha256(spec.run_id.encode()).hexdigest()[:8], 16)), str(sandbox.uid), str(spec.pids),
             python, spec.script, *spec.args],
            cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        lines: queue.Queue = queue.Queue(maxsize=LINE_QUEUE_MAX)
        readers = _start_readers([_chunks(proc.stdout, 1), _chunks(proc.stderr, 2)], lines)
        tail: list[str] = []

        def kill() -> None:  # the whole process group: the script's children too
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        def is_running() -> bool:
            if proc.poll() is None:
                return True
            kill()  # orphans left behind would hold the pipes open
            return False

        def deliver(line: str) -> None:
            tail.append(line)
            del tail[:-20]
            on_output(line)

        try:
            verdict = _supervise(lines=lines, on_output=deliver, should_cancel=should_cancel,
                                 timeout_s=spec.timeout_s, is_running=is_running, kill=kill)
        finally:
            kill()
            proc.wait()
            for thread in readers:
                thread.join(timeout=5)
        exit_code = proc.returncode
        oom = exit_code != 0 and any("MemoryError" in line for line in tail)
        if store_output is None:
            outputs = _archive.tar_directory(project / "outputs", workdir / "outputs.tar")
            return _result_for(verdict, exit_code=exit_code, oom=oom, memory_mb=spec.memory_mb,
                               timeout_s=spec.timeout_s, outputs=outputs, image=image)
        result = _result_for(verdict, exit_code=exit_code, oom=oom, memory_mb=spec.memory_mb,
                             timeout_s=spec.timeout_s, outputs=None, image=image)
        try:
            _store_directory(project / "outputs", store=store_output, max_bytes=spec.outputs_max_bytes)
        except (OutputsOverCap, DiskFull) as exc:
            return RunResult("failed", exit_code, str(exc), oom, None, image, outputs_failed=True)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
