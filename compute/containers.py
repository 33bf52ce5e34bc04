"""Service containers: start one replica of a service image, wait until it answers, stop it.

The port is published on an address of the engine's host (127.0.0.1 by default) with a port the
engine picks; callers talk to the container only through that published port.
"""

from __future__ import annotations

import http.client
import time

import docker.errors

from compute.engine import LABEL_ID, LABEL_KIND, LABEL_REPLICA, EngineError, connect, container_log_config
from compute.envimage import check_image_ref
from compute.images import SERVICE_PORT
from compute.network import SERVICE_NETWORK, ensure_network
from mlportal_runtime.logsafe import escape_controls

PORT_KEY = f"{SERVICE_PORT}/tcp"


def start_service_container(*, image: str, service_id: str, replica: int, name: str,
                            env: dict[str, str], publish_address: str = "127.0.0.1",
                            memory_mb: int = 1024, cpus: float = 1.0,
                            labels: dict[str, str] | None = None,
                            base_url: str | None = None) -> dict:
    """Starts a replica of ``image`` named ``name`` and returns ``{"id", "host", "port"}`` with
    the host port the engine assigned to 5001/tcp. Labels ``mlportal.kind=service`` (a caller
    may pass another kind, e.g. ``bench``, to keep the container out of the reconciler's view),
    ``mlportal.id=<service_id>``, ``mlportal.replica=<n>``; no restart policy (the portal's
    reconciler restarts). The replica joins the ``mlportal-services`` network, where no container
    reaches another and none reaches the host's services (see compute.network); its log rotates
    (engine.container_log_config). Raises EngineError (a name already in use, a missing image...)."""
    check_image_ref(image)
    network = ensure_network(SERVICE_NETWORK, base_url=base_url)
    all_labels = {LABEL_KIND: "service", **(labels or {}), LABEL_ID: str(service_id),
                  LABEL_REPLICA: str(replica)}
    with connect(base_url) as client:
        container = client.containers.run(
            image,
            detach=True,
            name=name,
            environment=dict(env),
            labels=all_labels,
            ports={PORT_KEY: (publish_address, None)},
            mem_limit=f"{memory_mb}m",
            memswap_limit=f"{memory_mb}m",
            nano_cpus=int(cpus * 1e9),
            pids_limit=512,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            restart_policy={"Name": "no"},
            network=network,
            log_config=container_log_config(),
        )
        try:
            container.reload()
            bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get(PORT_KEY) or []
            if not bindings:
                raise EngineError(f"the engine published no port for container {name} "
                                  f"(state: {container.status})")
            port = int(bindings[0]["HostPort"])
        except BaseException:
            container.remove(force=True)
            raise
    return {"id": container.id, "host": publish_address, "port": port}


def _ready(host: str, port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_ready(*, host: str, port: int, timeout_s: float = 60, container_id: str | None = None,
               base_url: str | None = None, path: str = "/ready") -> None:
    """Returns once ``GET http://host:port/ready`` answers 200. Raises EngineError (with the
    container's last log lines in ``log_tail`` and the last one in the message) when the
    container stops first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if _ready(host, port, path):
            return
        if container_id is not None:
            state = container_state(container_id, base_url=base_url)
            if state is None or not state["running"]:
                logs = container_logs(container_id, tail=40, base_url=base_url) if state else ""
                what = ("was removed" if state is None else
                        "ran out of memory" if state["oom"] else
                        f"exited with code {state['exit_code']}")
                raise EngineError(f"the service container {what} before it was ready"
                                  f"{_last_line(logs)}", log_tail=logs)
        if time.monotonic() > deadline:
            logs = container_logs(container_id, tail=40, base_url=base_url) if container_id else ""
            raise EngineError(f"the service did not answer {path} on {host}:{port} within "
                              f"{timeout_s:g} s{_last_line(logs)}", log_tail=logs)
        time.sleep(0.25)


def _last_line(logs: str) -> str:
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    return f": {lines[-1][:300]}" if lines else ""


def stop_container(container_id: str, *, base_url: str | None = None, timeout: int = 5) -> None:
    """Stops (SIGTERM, then SIGKILL after ``timeout`` s) and removes a container; a missing
    one is fine."""
    with connect(base_url, timeout=timeout + 60) as client:
        try:
            client.api.stop(container_id, timeout=timeout)
        except docker.errors.NotFound:
            return
        try:
            client.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass


def container_logs(container_id: str, *, tail: int = 200, base_url: str | None = None, timeout: int = 60) -> str:
    """Returns the last ``tail`` lines of a container's stdout and stderr ("" when it is gone),
    control characters escaped (what the container printed may be hostile: see logsafe).
    ``timeout``: seconds each engine call may take (a page's request asks for a short one)."""
    with connect(base_url, timeout=timeout) as client:
        try:
            raw = client.api.logs(container_id, stdout=True, stderr=True, tail=tail)
        except docker.errors.NotFound:
            return ""
    return escape_controls(raw.decode("utf-8", "replace"))


def container_state(container_id: str, *, base_url: str | None = None) -> dict | None:
    """Returns ``{"running", "status", "exit_code", "oom"}`` for a container, None when gone;
    ``exit_code`` is None while it runs."""
    with connect(base_url) as client:
        try:
            state = client.api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            return None
    running = bool(state.get("Running"))
    return {
        "running": running,
        "status": state.get("Status", ""),
        "exit_code": None if running else state.get("ExitCode"),
        "oom": bool(state.get("OOMKilled")),
    }
