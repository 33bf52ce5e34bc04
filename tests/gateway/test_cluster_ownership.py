"""Two portals on one swarm: what the second portal instance deployed (a Swarm service labelled with
its `mlportal.portal`, its task containers and its secrets) is never touched by this portal's
watcher or reconciler, while this portal's own orphans on that same engine are removed.

The second portal's service is made the way a portal makes one (`compute.swarm.apply_service` with
the labels `deployments.cluster.spec_for` gives, under another instance id), with the real worker
running the beat's tasks (`watch_swarm_tasks`, `reconcile_services`). Each pass is known to have run
over the engine when this portal's orphan of that pass is gone."""
from __future__ import annotations

import uuid

import pytest

from compute import swarm
from compute.containers import container_state, start_service_container
from compute.engine import connect
from deployments.tasks import reconcile_services, watch_swarm_tasks
from tests.helpers import wait_until
from workspaces.instance import portal_instance

pytestmark = [pytest.mark.docker, pytest.mark.integration]

OTHER_PORTAL = "a-second-portal-instance"


def _spec(image: str, portal: str) -> swarm.SwarmSpec:
    service_id = str(uuid.uuid4())
    return swarm.SwarmSpec(
        name=f"mlportal-test-owner-{service_id[:8]}", image=image, replicas=1,
        keys=[f"{service_id}-{name}-key" for name in ("primary", "secondary", "proxy")],
        internal_key=f"{service_id}-internal", env={"MLPORTAL_WORKERS": "1"}, cpus=0.5, memory_mb=512,
        labels={"mlportal.id": service_id, "mlportal.portal": portal, "mlportal.workspace": "theirs",
                "mlportal.service": "churnpred"})


def _secrets(service_id: str) -> set[str]:
    with connect() as client:
        return {s["Spec"]["Name"] for s in client.api.secrets(filters={"label": [f"mlportal.id={service_id}"]})}


def test_this_portals_watch_and_reconcile_never_touch_a_second_portals_swarm_service(
        deploy_worker, owner_api, swarm_env, built_image):
    image = built_image(owner_api, "ownership")["tag"]
    # A single-engine environment on the same engine, so reconcile_services looks at its containers.
    assert owner_api.post("/api/v1/environments/", {"name": "staging"}, format="json").status_code == 201
    theirs, ours = _spec(image, OTHER_PORTAL), _spec(image, portal_instance())
    stray = None
    try:
        for spec in (theirs, ours):
            swarm.apply_service(spec)

        def their_task():
            running = swarm.running_tasks(swarm.service_tasks(theirs.name))
            return running.get(1)

        task = wait_until(their_task, timeout=180, interval=0.5, message="the second portal's task to run")
        their_secrets = _secrets(theirs.labels["mlportal.id"])
        assert len(their_secrets) == 2

        watch_swarm_tasks.delay()
        wait_until(lambda: swarm.find_service(ours.name) is None, timeout=90, interval=0.5,
                   message="this portal's orphan Swarm service to be removed")
        # The single-engine reconciler of this portal sees the same engine: its own stray goes, the
        # second portal's task container stays.
        stray = start_service_container(image=image, service_id=str(uuid.uuid4()), replica=1, env={},
                                        name=f"mlportal-test-owner-stray-{uuid.uuid4().hex[:6]}",
                                        labels={"mlportal.portal": portal_instance()})
        reconcile_services.delay()
        wait_until(lambda: container_state(stray["id"]) is None, timeout=90, interval=0.5,
                   message="this portal's stray container to be removed")
        stray = None

        assert swarm.find_service(theirs.name) is not None
        assert swarm.running_tasks(swarm.service_tasks(theirs.name))[1]["id"] == task["id"]  # never replaced
        assert container_state(task["container_id"]) is not None
        assert _secrets(theirs.labels["mlportal.id"]) == their_secrets
        assert [s["name"] for s in swarm.list_services(portal=OTHER_PORTAL)] == [theirs.name]
    finally:
        for spec in (theirs, ours):
            swarm.remove_service(spec.name, portal=spec.labels["mlportal.portal"])
        if stray is not None:
            from compute.runner import remove_container

            remove_container(stray["id"])
