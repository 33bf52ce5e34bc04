"""Service containers stay apart (issue 13): from inside one workspace's replica, another
service's replica, Redis, PostgreSQL and a portal listening on the host are out of reach, while
the host still reaches every replica through its port published on 127.0.0.1. Runs allowed the
network get the same treatment; other runs have none. Every container's log rotates.

Container addresses are only ever dialled from inside containers; the host side uses the
published 127.0.0.1 ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import urllib.request

import pytest

from compute.containers import start_service_container, stop_container, wait_ready
from compute.images import build_service_image, remove_image
from compute.network import RUN_NETWORK, SERVICE_NETWORK
from tests.compute.test_runner_docker import run as run_script

pytestmark = pytest.mark.docker

SCORE = b"def init():\n    pass\n\ndef run(input_str):\n    return {'ok': True}\n"
TAG = f"mlportal-test-isolation:{os.getpid()}"
PROBE = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor

def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return target, "open"
    except OSError as exc:
        return target, type(exc).__name__

with ThreadPoolExecutor(16) as pool:
    print("PROBE " + json.dumps(dict(pool.map(probe, sys.argv[1:]))))
"""


@pytest.fixture(scope="module")
def two_services(small_env):
    """Replicas of two services in two workspaces, as the portal starts them."""
    build_service_image(tag=TAG, env_image=small_env["tag"], app_files={"score.py": SCORE},
                        labels={"mlportal.test": "yes"}, log=lambda line: None)
    started = []
    try:
        for name in ("a", "b"):
            info = start_service_container(image=TAG, service_id=f"svc-iso-{name}", replica=0,
                                           name=f"mlportal-test-iso-{name}-{os.getpid()}", env={},
                                           memory_mb=256, labels={"mlportal.workspace": f"team-{name}"})
            started.append(info)
        for info in started:
            wait_ready(host=info["host"], port=info["port"], container_id=info["id"], timeout_s=60)
        yield started
    finally:
        for info in started:
            stop_container(info["id"])
        remove_image(TAG)


def inspect(container_id: str) -> dict:
    done = subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)[0]


def address(container_id: str) -> tuple[str, str]:
    """(the container's address, its network's gateway, i.e. the host as the container sees it)."""
    [settings] = inspect(container_id)["NetworkSettings"]["Networks"].values()
    return settings["IPAddress"], settings["Gateway"]


def host_addresses() -> list[str]:
    """The host's own global IPv4 addresses that are not on a Docker bridge."""
    done = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, timeout=10)
    found = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if not (parts[1].startswith(("docker", "br-", "mlp-", "veth"))):
            found.append(parts[3].split("/")[0])
    return found


def probe_from(container_id: str, targets: list[str]) -> dict[str, str]:
    done = subprocess.run(["docker", "exec", container_id, "python3", "-c", PROBE, *targets],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout.split("PROBE ", 1)[1])


@pytest.fixture
def portal_on_all_addresses():
    """A listener on 0.0.0.0, as a portal (or any host service) bound there; yields its port."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def test_the_host_reaches_every_replica_on_its_published_localhost_port(two_services):
    for info in two_services:
        assert info["host"] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{info['port']}/health", timeout=10) as response:
            assert response.status == 200
        attrs = inspect(info["id"])
        assert list(attrs["NetworkSettings"]["Networks"]) == [SERVICE_NETWORK]
        assert attrs["HostConfig"]["PortBindings"]["5001/tcp"][0]["HostIp"] == "127.0.0.1"


def test_a_replica_reaches_no_other_replica_and_no_host_service(two_services, portal_on_all_addresses):
    a, b = two_services
    a_ip, gateway = address(a["id"])
    b_ip, _ = address(b["id"])
    host_ports = ["6379", "5432", str(portal_on_all_addresses)]  # Redis, PostgreSQL, the portal
    targets = [f"{b_ip}:5001"] + [f"{gateway}:{port}" for port in host_ports]
    targets += [f"{ip}:{port}" for ip in host_addresses() for port in host_ports]
    targets += [f"{gateway}:{b['port']}"]  # B's published port, through the host
    seen = probe_from(a["id"], [f"{a_ip}:5001", *targets])
    assert seen.pop(f"{a_ip}:5001") == "open"  # the probe itself works: a replica reaches its own server
    assert all(state != "open" for state in seen.values()), seen
    # ...and the other way round.
    back = probe_from(b["id"], [f"{a_ip}:5001", f"{gateway}:6379"])
    assert all(state != "open" for state in back.values()), back


def test_a_container_on_the_default_bridge_cannot_reach_a_replica(two_services, small_env):
    a_ip, _ = address(two_services[0]["id"])
    done = subprocess.run(["docker", "run", "--rm", "--label", "mlportal.test=yes", "--network", "bridge",
                           small_env["tag"], "python3", "-c", PROBE, f"{a_ip}:5001"],
                          capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(done.stdout.split("PROBE ", 1)[1])
    assert seen[f"{a_ip}:5001"] != "open", seen


RUN_PROBE = PROBE.replace("sys.argv[1:]", "TARGETS").replace("import json, socket, sys", """import json, socket, struct, sys

def default_gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))

GATEWAY = default_gateway()
TARGETS = [t.replace("GATEWAY", GATEWAY) for t in sys.argv[1:]]""")


def test_a_run_allowed_the_network_is_kept_off_replicas_and_host_services(tmp_path, recorder, two_services,
                                                                          portal_on_all_addresses):
    a_ip, _ = address(two_services[0]["id"])
    targets = [f"{a_ip}:5001", "GATEWAY:6379", "GATEWAY:5432", f"GATEWAY:{portal_on_all_addresses}"]
    result = run_script(tmp_path, recorder, RUN_PROBE, run_id="netiso", network=True, args=targets)
    assert result.status == "completed", recorder.text
    [line] = [line for line in recorder.text if line.startswith("PROBE ")]
    seen = json.loads(line[len("PROBE "):])
    assert len(seen) == 4 and all(state != "open" for state in seen.values()), seen


def test_a_run_without_the_network_has_only_loopback(tmp_path, recorder, small_env):
    script = "import socket\nprint(sorted(name for _, name in socket.if_nameindex()))\n"
    result = run_script(tmp_path, recorder, script, run_id="nonet")
    assert result.status == "completed" and recorder.text == ["['lo']"]


ROTATED = {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}


class InspectOnStart(list):
    """An on_container sink that reads each run container's log configuration while it exists."""

    def append(self, container_id: str) -> None:
        super().append(inspect(container_id)["HostConfig"])


def test_service_and_run_containers_rotate_their_logs(two_services, tmp_path, recorder):
    assert inspect(two_services[0]["id"])["HostConfig"]["LogConfig"] == ROTATED
    for network in (False, True):
        configs = InspectOnStart()
        (tmp_path / str(network)).mkdir()
        result = run_script(tmp_path / str(network), recorder, "print('hello')", run_id=f"logs{network:d}",
                            containers=configs, network=network)
        assert result.status == "completed"
        [config] = configs
        assert config["LogConfig"] == ROTATED
        assert config["NetworkMode"] == (RUN_NETWORK if network else "none")
