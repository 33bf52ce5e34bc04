"""Runs a ``docker build`` from a prepared context and streams its log line by line.

Shared by the environment image and the service images. The legacy builder runs each ``RUN``
step in a container it names in the log (``---> Running in <id>``); on the deadline a watchdog
kills that container, which fails the step and ends the build promptly.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO

import docker

from compute.engine import ENGINE_EXCEPTIONS, BuildError, connect, is_not_found, translate_error

STEP_RE = re.compile(r"^Step (\d+/\d+) : (.*)$")
RUNNING_IN_RE = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})\s*$")
TAIL_LINES = 40


class _LineSplitter:
    """Turns arbitrary text chunks into complete lines; ``flush`` returns the partial rest."""

    def __init__(self) -> None:
        self._rest = ""

    def feed(self, chunk: str) -> list[str]:
        text = self._rest + chunk.replace("\r\n", "\n")
        *lines, self._rest = text.split("\n")
        return lines

    def flush(self) -> list[str]:
        rest, self._rest = self._rest, ""
        return [rest] if rest else []


def build_image(client: docker.DockerClient, *, context: IO[bytes], tag: str,
                labels: dict[str, str], log: Callable[[str], None], timeout_s: int,
                base_url: str | None, buildargs: dict[str, str] | None = None) -> str:
    """Builds ``context`` (an uncompressed tar holding a Dockerfile) as ``tag`` and returns the
    image id. ``labels`` go on the final image only (the legacy builder does not put them on a
    build stage or on the step images a failed build leaves): a Dockerfile that wants its every
    image labelled says so itself, from ``buildargs``. Each log line goes to ``log`` as it comes. Raises BuildError naming the failing
    step (with the last log lines, pip's ``ERROR:`` line in the message when there is one) or
    saying the build went over ``timeout_s``; EngineError when the engine fails."""
    state = {"step": "", "container": None}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    timed_out = threading.Event()
    lock = threading.Lock()

    def on_deadline() -> None:
        timed_out.set()
        with lock:
            container = state["container"]
        if container:
            try:
                with connect(base_url, timeout=10) as killer:
                    killer.api.kill(container)
            except Exception:  # noqa: BLE001 - best effort: the stream deadline still applies
                pass

    watchdog = threading.Timer(timeout_s, on_deadline)
    watchdog.daemon = True
    splitter = _LineSplitter()
    error: str | None = None

    def handle(line: str) -> None:
        line = line.rstrip()
        tail.append(line)
        log(line)
        if m := STEP_RE.match(line):
            with lock:
                state["step"] = f"{m.group(1)} {m.group(2)}"
                state["container"] = None
        elif m := RUNNING_IN_RE.match(line):
            with lock:
                state["container"] = m.group(1)

    started = time.monotonic()
    watchdog.start()
    try:
        stream = client.api.build(
            fileobj=context, custom_context=True, tag=tag, labels=labels, buildargs=buildargs or None, rm=True,
            forcerm=True, pull=False, decode=True, timeout=timeout_s + 30,
        )
        for chunk in stream:
            if "stream" in chunk:
                for line in splitter.feed(chunk["stream"]):
                    handle(line)
            elif "error" in chunk:
                error = str(chunk.get("error") or chunk.get("errorDetail", {}).get("message", ""))
            elif "status" in chunk:
                handle(str(chunk["status"]))
            if timed_out.is_set() and error is None and time.monotonic() - started > timeout_s:
                break
    except ENGINE_EXCEPTIONS + (OSError,) as exc:
        if not timed_out.is_set():
            raise translate_error(exc, base_url) from exc
    finally:
        watchdog.cancel()
    for line in splitter.flush():
        handle(line)

    step = state["step"]
    log_tail = "\n".join(tail)
    if timed_out.is_set():
        raise BuildError(f"image build over its time limit of {timeout_s} s (at step {step or '?'})",
                         step=step, log_tail=log_tail)
    if error is not None:
        detail = " ".join(error.split())
        pip_errors = [line for line in tail if line.startswith("ERROR:")]
        if pip_errors:
            detail = f"{pip_errors[0]} ({detail})"
        raise BuildError(f"image build failed at step {step or '?'}: {detail}",
                         step=step, log_tail=log_tail)
    try:
        image = client.images.get(tag)
    except ENGINE_EXCEPTIONS as exc:
        if is_not_found(exc):
            raise BuildError(f"image build finished without producing {tag}", step=step,
                             log_tail=log_tail) from exc
        raise
    return image.id
