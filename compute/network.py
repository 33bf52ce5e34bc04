"""The networks MLPortal's containers live on, kept apart from each other and from the host.

Service replicas (every workspace's) share one bridge network, ``mlportal-services``, made with
inter-container traffic off (``com.docker.network.bridge.enable_icc=false``): no replica can
open a connection to another one, of its own service or any other, while the port each publishes
on 127.0.0.1 still reaches it from the host (the portal, the gateway, the health checks). Docker
keeps different bridges apart, so containers on the default bridge (anyone's) cannot reach the
replicas either. Runs that the project lets use the network get a bridge of their own made the
same way, ``mlportal-runs``; other runs have no network at all (``network_mode="none"``).

A bridge does not stop a container from opening connections to the host itself, through the
bridge's gateway address or any other address of the host: Redis, PostgreSQL or the portal
listening on 0.0.0.0 would answer. So each of these bridges gets a fixed interface name and
the host drops what arrives from it, except replies to connections the host opened
(:func:`ensure_host_firewall`, iptables ``INPUT``). The worker installs those rules when it
drives the local engine as root; for an engine on another host (or a worker without root), run
``scripts/isolate_containers.sh`` as root on that host once per boot. Outbound traffic to other
networks (the internet, through NAT) is left as it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import threading

import docker.errors

from compute.engine import LABEL_KIND, EngineError, connect

logger = logging.getLogger(__name__)

SERVICE_NETWORK = "mlportal-services"
RUN_NETWORK = "mlportal-runs"
# Interface names of the bridges (at most 15 characters), fixed so the host's rules can name them.
BRIDGES = {SERVICE_NETWORK: "mlp-services0", RUN_NETWORK: "mlp-runs0"}
FIREWALL_CHAIN = "MLPORTAL-ISOLATE"
FIREWALL_LOCK = "mlportal-firewall.lock"  # in /run: one per host

_ready: set[tuple[str, str]] = set()  # (engine, network) pairs made and firewalled by this process
_lock = threading.Lock()


def _is_local(base_url: str | None) -> bool:
    return not base_url or base_url.startswith("unix://")


def ensure_network(name: str, *, base_url: str | None = None) -> str:
    """Returns ``name`` after making sure the engine has that isolated bridge network (and, for
    the local engine, the host rules that drop its traffic to the host). Creating one that
    another worker (another process, or another host's worker on the same engine) created at the
    same moment is fine. Raises EngineError."""
    if name not in BRIDGES:
        raise ValueError(f"unknown MLPortal network {name!r}")
    key = (base_url or "", name)
    with _lock:
        if key in _ready:
            return name
        with connect(base_url) as client:
            try:
                client.networks.get(name)
            except docker.errors.NotFound:
                try:
                    client.networks.create(
                        name, driver="bridge", check_duplicate=True,
                        options={"com.docker.network.bridge.enable_icc": "false",
                                 "com.docker.network.bridge.name": BRIDGES[name]},
                        labels={LABEL_KIND: "network"},
                    )
                except docker.errors.APIError as refused:
                    # Another worker made it at the same moment: Docker answers 409 (the name is
                    # taken) or, when both creates passed its name check, 403 (the fixed bridge
                    # interface name is taken). Whatever the refusal, the network that now exists
                    # is the answer; with none behind it, the refusal is.
                    try:
                        client.networks.get(name)
                    except docker.errors.NotFound:
                        raise refused from None
        if _is_local(base_url):
            ensure_host_firewall([BRIDGES[name]])
        _ready.add(key)
    return name


def _iptables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=30)


def _must(*args: str) -> None:
    done = _iptables(*args)
    if done.returncode != 0:
        raise EngineError(f"could not isolate MLPortal's containers from the host "
                          f"(iptables {' '.join(args)}): {done.stderr.strip() or done.returncode}")


CHAIN_RULES = [
    f"-A {FIREWALL_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
    f"-A {FIREWALL_CHAIN} -j DROP",
]


def ensure_host_firewall(bridges: list[str]) -> bool:
    """Makes the host drop what containers on ``bridges`` (and every other MLPortal bridge)
    send to it, except replies to connections the host opened: a chain ``MLPORTAL-ISOLATE``
    (RETURN for established/related, DROP the rest) jumped to from ``INPUT`` for each bridge.
    Idempotent; ``scripts/isolate_containers.sh`` does the same from a shell. Returns True when
    the rules are in place; without iptables or root it logs a warning naming that script and
    returns False (the containers then still cannot reach each other, but may reach services
    listening on the host's addresses)."""
    if shutil.which("iptables") is None:
        logger.warning("iptables is missing: containers may reach host services; run "
                       "scripts/isolate_containers.sh as root on the engine's host")
        return False
    try:
        with _host_lock():
            _install_rules(bridges)
    except (OSError, subprocess.SubprocessError, EngineError) as exc:
        logger.warning("%s; run scripts/isolate_containers.sh as root on the engine's host", exc)
        return False
    return True


@contextlib.contextmanager
def _host_lock():
    """Holds the host-wide lock the portal's processes take turns at iptables under: each check
    then insert (``-C`` / ``-I``, ``-F`` / ``-A``) is two commands, and workers starting together
    otherwise each added the same rules (iptables' own ``-w`` lock covers one command only)."""
    # /run: only root changes iptables, and a file another user made in /tmp could not be opened
    # by root there (fs.protected_regular).
    folder = "/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()
    fd = os.open(os.path.join(folder, FIREWALL_LOCK), os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _install_rules(bridges: list[str]) -> None:
    """The chain and the INPUT jumps, added where missing (under the host lock). Raises EngineError."""
    listed = _iptables("-S", FIREWALL_CHAIN)
    if listed.returncode != 0:
        _must("-N", FIREWALL_CHAIN)
        rules = []
    else:
        rules = [line for line in listed.stdout.splitlines() if line.startswith("-A ")]
    if rules != CHAIN_RULES:
        _must("-F", FIREWALL_CHAIN)
        _must("-A", FIREWALL_CHAIN, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN")
        _must("-A", FIREWALL_CHAIN, "-j", "DROP")
    for bridge in sorted(set(bridges) | set(BRIDGES.values())):
        if _iptables("-C", "INPUT", "-i", bridge, "-j", FIREWALL_CHAIN).returncode != 0:
            _must("-I", "INPUT", "1", "-i", bridge, "-j", FIREWALL_CHAIN)
