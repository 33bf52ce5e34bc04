"""Every run container carries the label of the portal instance that started it, and the lost-run
sweep touches only its own: a second portal (another instance id) on the same engine keeps its
stopped run containers."""
from __future__ import annotations

import os
import uuid

import pytest

from compute.engine import LABEL_ID, LABEL_KIND, LABEL_PORTAL, connect
from compute.runner import RunSpec, list_containers, run_in_docker
from runs import reconcile
from tests.compute.fixtures import BASE_IMAGE, SMALL_REQUIREMENTS, WHEEL_CACHE, make_snapshot
from workspaces.instance import portal_instance

pytestmark = [pytest.mark.docker, pytest.mark.django_db]


def _stopped_run_container(client, portal: str) -> str:
    container = client.containers.create(BASE_IMAGE, command=["true"], name=f"mlportal-test-run-{uuid.uuid4().hex[:8]}",
                                         labels={LABEL_KIND: "run", LABEL_ID: str(uuid.uuid4()), LABEL_PORTAL: portal})
    container.start()
    container.wait(timeout=60)
    return container.id


def _exists(client, container_id: str) -> bool:
    return any(c.id == container_id for c in client.containers.list(all=True, filters={"id": container_id}))


def test_the_sweep_removes_only_this_portals_stopped_run_containers():
    with connect() as client:
        ours = _stopped_run_container(client, portal_instance())
        theirs = _stopped_run_container(client, "another-portal-instance")
        try:
            result = reconcile.sweep_lost_runs()
            assert ours in result["removed"]
            assert theirs not in result["removed"]
            assert not _exists(client, ours)
            assert _exists(client, theirs)
        finally:
            client.api.remove_container(theirs, force=True)
            if _exists(client, ours):
                client.api.remove_container(ours, force=True)


def test_list_containers_names_one_portals_only():
    with connect() as client:
        theirs = _stopped_run_container(client, "portal-b")
        try:
            assert theirs in {c["id"] for c in list_containers("run", portal="portal-b")}
            assert theirs not in {c["id"] for c in list_containers("run", portal=portal_instance())}
        finally:
            client.api.remove_container(theirs, force=True)


def test_a_run_container_carries_its_portals_label(tmp_path, recorder, small_env):
    snapshot = make_snapshot(tmp_path / "snapshot.tar", {"train.py": "print('hi')"})
    spec = RunSpec(run_id=f"test-label-{os.getpid()}", snapshot=snapshot, script="train.py", args=[],
                   requirements=SMALL_REQUIREMENTS, base_image=BASE_IMAGE, portal="portal-b")
    labels = []

    def seen(container_id):
        with connect() as client:
            labels.append(client.api.inspect_container(container_id)["Config"]["Labels"])

    result = run_in_docker(spec, wheel_cache=WHEEL_CACHE, on_output=recorder, should_cancel=lambda: False,
                           on_container=seen, workdir=tmp_path / "work")
    assert result.status == "completed"
    assert labels and labels[0][LABEL_PORTAL] == "portal-b" and labels[0][LABEL_KIND] == "run"
