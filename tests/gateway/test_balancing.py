"""The gateway's choices, in one process: least outstanding over usable replicas, the revision a
request goes to, and the per-service limiter (its slots shared between processes)."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.balancing import Balancer, Full, Limiter, choose_revision, mirrored
from gateway.slots import QUEUE_BASE, SlotFolder
from gateway.table import Replica, Revision, Route, Table, key_digest

REPO = Path(__file__).resolve().parents[2]


def _replica(n: int) -> Replica:
    return Replica(number=n, host="127.0.0.1", port=9000 + n, container_id=f"c{n}")


def _route(canary_weight: int = 0, shadow_weight: int = 0) -> Route:
    live = Revision(number=1, image_ref="m:1", model_version="model.pkl:1", replicas=(_replica(1), _replica(2)))
    canary = Revision(number=2, image_ref="m:2", model_version="model.pkl:2", replicas=(_replica(3),), role="canary",
                      weight=canary_weight) if canary_weight else None
    shadow = Revision(number=3, image_ref="m:3", model_version="model.pkl:3", replicas=(_replica(4),), role="shadow",
                      weight=shadow_weight) if shadow_weight else None
    return Route(service_id="s", name="svc", workspace="team", status="healthy", key_digests=(key_digest("k1"), key_digest("k2")),
                 proxy_key="p", concurrency=2, queue=1, live=live, canary=canary, shadow=shadow)


def test_the_least_busy_usable_replica_goes_first_and_a_refused_one_is_left_out():
    balancer = Balancer()
    one, two, three = _replica(1), _replica(2), _replica(3)
    balancer.state(one).outstanding = 3
    balancer.state(two).outstanding = 1
    assert balancer.order((one, two, three))[:2] == [three, two]
    balancer.refused(three)
    assert balancer.order((one, two, three)) == [two, one]
    balancer.probed(three, True)  # answered /ready again
    assert balancer.order((one, two, three))[0] == three
    balancer.probed(two, False)
    assert two not in balancer.order((one, two, three))


def test_equal_replicas_take_turns():
    balancer = Balancer()
    firsts = {balancer.order((_replica(1), _replica(2)))[0].number for _ in range(4)}
    assert firsts == {1, 2}


def test_the_canary_gets_its_weight_and_a_forced_revision_wins():
    route = _route(canary_weight=10)
    assert choose_revision(route, draw=0.05).number == 2 and choose_revision(route, draw=0.10).number == 1
    assert choose_revision(route, forced=2, draw=0.99).number == 2
    assert choose_revision(route, forced=1, draw=0.0).number == 1
    assert choose_revision(route, forced=9) is None
    shadowed = _route(shadow_weight=20)
    assert choose_revision(shadowed, forced=3) is None  # a shadow never answers callers
    assert mirrored(shadowed, draw=0.19).number == 3 and mirrored(shadowed, draw=0.2) is None
    assert mirrored(route, draw=0.0) is None


def test_keys_are_matched_by_digest_in_every_candidate():
    table = Table()
    route = _route()
    table.by_name["svc"] = [route]
    table.by_id["00000000-0000-0000-0000-000000000001"] = route
    assert table.find("svc", "k1") is route and table.find("svc", "k2") is route
    assert table.find("svc", "k3") is None and table.find("other", "k1") is None
    assert table.find("00000000-0000-0000-0000-000000000001", "k1") is route


@pytest.mark.parametrize("shared", [False, True], ids=["this-process", "shared-slots"])
def test_the_limiter_queues_up_to_its_bound_then_refuses_and_hands_slots_on_in_order(shared, tmp_path):
    slots = SlotFolder(tmp_path).for_service("s") if shared else None

    async def scenario():
        limiter = Limiter(slots)
        first = await limiter.acquire(2, 1, 1.0)
        second = await limiter.acquire(2, 1, 1.0)
        waiter = asyncio.create_task(limiter.acquire(2, 1, 5.0))
        await asyncio.sleep(0)
        assert len(limiter.waiting) == 1
        with pytest.raises(Full):
            await limiter.acquire(2, 1, 1.0)
        limiter.release(first)
        third = await waiter  # got the slot released above
        assert limiter.active == 2 and not limiter.waiting
        with pytest.raises(asyncio.TimeoutError):
            await limiter.acquire(2, 1, 0.05)
        assert not limiter.waiting and limiter.active == 2
        limiter.release(second), limiter.release(third)
        assert limiter.active == 0
        if shared:
            assert slots.holders(0, 2) == 0 and slots.holders(QUEUE_BASE, 1) == 0

    # A thread of its own: the session's Playwright keeps an event loop running in this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, scenario()).result()


HOLDER = """
import sys, time
from gateway.slots import QUEUE_BASE, SlotFolder
slots = SlotFolder(sys.argv[1]).for_service("svc")
taken = [slots.take(0, 3), slots.take(0, 3), slots.take(QUEUE_BASE, 1)]
print(taken, flush=True)
time.sleep(60)
"""


def test_the_slots_hold_across_processes_and_a_dead_process_leaves_none_taken(tmp_path):
    """What two uvicorn workers see: the limit is the service's, not each process's."""
    import subprocess
    import sys

    from tests.helpers import wait_until

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == f"[0, 1, {QUEUE_BASE}]"
        slots = SlotFolder(tmp_path).for_service("svc")
        assert slots.holders(0, 3) == 2 and slots.holders(QUEUE_BASE, 1) == 1

        async def scenario():
            limiter = Limiter(slots)
            mine = limiter.try_acquire(3)
            assert mine == 2 and limiter.try_acquire(3) is None  # three at once over both processes
            with pytest.raises(Full):  # the queue's one place is the other process's
                await limiter.acquire(3, 1, 1.0)
            limiter.release(mine)
            assert slots.holders(0, 3) == 2

        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, scenario()).result()
    finally:
        holder.kill()
        holder.wait()
    wait_until(lambda: slots.holders(0, 3) == 0 and slots.holders(QUEUE_BASE, 1) == 0, timeout=5)


def test_a_waiter_gets_the_slot_another_process_gives_back(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", HOLDER.replace("time.sleep(60)", "time.sleep(0.5)"), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == f"[0, 1, {QUEUE_BASE}]"
        slots = SlotFolder(tmp_path).for_service("svc")

        async def scenario():
            limiter = Limiter(slots)
            assert limiter.try_acquire(2) is None  # both slots are the other process's
            return await limiter.acquire(2, 2, 10.0)  # queued here until it exits and its locks go

        with ThreadPoolExecutor(max_workers=1) as pool:
            assert pool.submit(asyncio.run, scenario()).result() in (0, 1)
    finally:
        holder.kill()
        holder.wait()
