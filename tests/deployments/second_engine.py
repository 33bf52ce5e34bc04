"""A second, real Docker engine that is in no swarm, for the tests of what a user meets when a
cluster environment's engine is not a swarm manager.

The machine's own engine must stay a swarm manager (every suite deploys to it, and a second
dockerd on the host would fight it over docker0 and docker_gwbridge), so this one runs inside a
container of its own (its own network namespace and data folder, a tmpfs): the host's own
``dockerd`` (the ``/usr`` of the host, mounted read-only), no bridge, no iptables rules, the vfs
storage driver, its API published on 127.0.0.1. It is a whole engine: ``/info`` reports its real
swarm state, and the portal's ``init_swarm`` really makes it the manager of a single-node swarm.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

from tests.real_parts import missing_part

LABEL = "mlportal.test=second-engine"


def _docker(*args: str, timeout: float = 60) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=timeout).stdout


class SecondEngine:
    def __init__(self, container: str, port: int) -> None:
        self.container, self.port = container, port
        self.url = f"tcp://127.0.0.1:{port}"

    def _call(self, method: str, path: str, body: dict | None = None) -> dict | str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            raw = answer.read()
        return json.loads(raw) if raw.strip() else ""

    def swarm(self) -> dict:
        """``docker info``'s Swarm block, asked of the engine itself (not through the portal)."""
        return self._call("GET", "/info")["Swarm"]

    def leave(self) -> None:
        """Makes the engine leave its swarm (if it is in one), so the next test meets it in none."""
        if self.swarm().get("LocalNodeState") != "inactive":
            self._call("POST", "/swarm/leave?force=true")


@contextmanager
def second_engine(image: str):
    """Starts the engine (in a container of ``image``, any image with /etc and /var: its /usr is the
    host's) and yields a SecondEngine once its API answers; removes the container after."""
    if shutil.which("docker") is None or not Path("/usr/sbin/dockerd").exists():
        missing_part("Docker engine", "a second engine needs the host's docker CLI and /usr/sbin/dockerd")
    name = f"mlportal-test-engine-{uuid.uuid4().hex[:8]}"
    try:
        _docker("image", "inspect", image)
    except subprocess.CalledProcessError:
        missing_part("Docker engine", f"the image {image} (for the second engine's container) is not in the engine")
    _docker("run", "-d", "--rm", "--name", name, "--label", LABEL, "--cap-add", "SYS_ADMIN",
            "-v", "/usr:/usr:ro", "--tmpfs", "/var/lib/docker", "--tmpfs", "/run", "-p", "127.0.0.1::2375", image,
            "dockerd", "--host", "tcp://0.0.0.0:2375", "--tls=false", "--iptables=false", "--ip6tables=false",
            "--bridge=none", "--storage-driver=vfs")
    try:
        port = int(_docker("port", name, "2375/tcp").splitlines()[0].rsplit(":", 1)[1])
        engine = SecondEngine(name, port)
        deadline = time.monotonic() + 90
        while True:
            try:
                engine.swarm()
                break
            except OSError:
                if time.monotonic() > deadline:
                    logs = subprocess.run(["docker", "logs", "--tail", "20", name], capture_output=True, text=True)
                    raise AssertionError(f"the second engine did not answer within 90 s:\n{logs.stdout}{logs.stderr}")
                time.sleep(0.3)
        yield engine
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
