"""Workers that make MLPortal's bridge network at the same moment all get it: Docker refuses every
create but one, with 409 (the name is taken) or 403 (the bridge's fixed interface name is taken, what
Docker 20.10 answers when two creates pass its name check together), and `ensure_network` then finds
the network the other worker made instead of failing the deploy or the run; and the host's rules
for the bridge go in once, not once per process.

The race is between processes (one process's threads take turns under the module's lock), so the
creates come from forked processes released together; the network has a name of this test's own."""
from __future__ import annotations

import multiprocessing
import subprocess
import uuid

import docker.errors
import pytest

from compute import network
from compute.engine import connect

pytestmark = pytest.mark.docker

PROCESSES = 8


def _create(name: str, barrier, results) -> None:
    network._ready.clear()
    barrier.wait(timeout=60)
    try:
        network.ensure_network(name)
        results.put("ok")
    except Exception as exc:  # the parent reports whatever a child met
        results.put(f"{type(exc).__name__}: {exc}")


def _remove(name: str, bridge: str) -> None:
    with connect() as client:
        for item in client.networks.list(names=[name]):
            try:
                item.remove()
            except docker.errors.NotFound:
                pass
    # Each process that raced may have added the host rule for the bridge: remove every copy.
    for _ in range(PROCESSES + 1):
        if subprocess.run(["iptables", "-w", "-D", "INPUT", "-i", bridge, "-j", network.FIREWALL_CHAIN],
                          capture_output=True, check=False).returncode != 0:
            break


def test_concurrent_creates_of_one_network_all_succeed(monkeypatch):
    suffix = uuid.uuid4().hex[:6]
    name, bridge = f"mlportal-test-race-{suffix}", f"mlpt-race{suffix}"
    monkeypatch.setitem(network.BRIDGES, name, bridge)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    children = [context.Process(target=_create, args=(name, barrier, results)) for _ in range(PROCESSES)]
    try:
        for child in children:
            child.start()
        answers = [results.get(timeout=120) for _ in children]
        for child in children:
            child.join(timeout=60)
        assert answers == ["ok"] * PROCESSES, answers
        with connect() as client:
            made = client.networks.list(names=[name])
            assert len(made) == 1
            options = client.api.inspect_network(made[0].id)["Options"]
        assert options["com.docker.network.bridge.enable_icc"] == "false"
        assert options["com.docker.network.bridge.name"] == bridge
        # The host rule for its bridge went in once, and the chain holds its two rules once: the
        # processes took turns at iptables.
        rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True, check=True).stdout.splitlines()
        assert rules.count(f"-A INPUT -i {bridge} -j {network.FIREWALL_CHAIN}") == 1, rules
        assert [r for r in rules if r.startswith(f"-A {network.FIREWALL_CHAIN} ")] == network.CHAIN_RULES
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
        _remove(name, bridge)


def test_a_refusal_with_no_network_behind_it_is_still_an_error(monkeypatch):
    # A bridge interface name no network can take (over 15 characters): the engine refuses the
    # create and there is nothing to find afterwards, so the refusal is what the caller hears.
    name = f"mlportal-test-bad-{uuid.uuid4().hex[:6]}"
    monkeypatch.setitem(network.BRIDGES, name, "x" * 40)
    monkeypatch.setattr(network, "_ready", set())
    try:
        with pytest.raises(network.EngineError) as refused:
            network.ensure_network(name)
        assert "(500)" in str(refused.value) and "bridge interface" in str(refused.value)  # the engine's refusal
    finally:
        _remove(name, "x" * 40)
