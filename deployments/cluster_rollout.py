"""Canaries and shadows of services in ``cluster`` environments: the new revision is a second Swarm
service beside the live one (``cluster.revision_name``, labelled with its revision), its tasks are
replica rows numbered 101… with that revision, and the gateway splits or mirrors traffic between
the two from those rows, as it does on one engine (gateway/worker.py keeps the rollout's rules).

Promote asks Swarm to roll the live Swarm service to the new image (start-first, its own rollback
on failure) while the canary still serves, then removes the canary's service; abort only removes
it. Called by gateway.worker under the service's lease.
"""
from __future__ import annotations

from compute import swarm
from deployments import cluster
from deployments.models import Service, ServiceReplica


def start(service: Service, *, image, number: int, replicas: int) -> dict[int, dict]:
    """Creates revision ``number``'s Swarm service (``replicas`` tasks of ``image``, the service's
    keys, limits and placement) and waits until its tasks run healthy; returns slot → task. On
    failure its Swarm service is removed again and ClusterError (or EngineError) raised."""
    base_url = service.environment.docker_url
    swarm.require_manager(base_url)
    name = cluster.revision_name(service, number)
    swarm.apply_service(cluster.spec_for(service, image=image, replicas=replicas, revision=number), base_url=base_url)
    try:
        return cluster.wait_running(service, replicas, name=name)
    except (cluster.ClusterError, swarm.EngineError):
        remove(service, number)
        raise


def replica_rows(service: Service, running: dict[int, dict], *, revision) -> list[ServiceReplica]:
    """The rows of a new revision's running tasks (numbers 101…, as a canary's on one engine)."""
    from gateway.services import REPLICA_OFFSET

    return [ServiceReplica(service=service, number=REPLICA_OFFSET + slot, container_id=task["container_id"],
                           host=cluster._host(service.environment, task), port=task["port"], task_id=task["id"],
                           node=task["node"], revision=revision, state="running", ready=True)
            for slot, task in running.items()]


def promote(service: Service, *, image) -> tuple[bool, str]:
    """Rolls the live Swarm service to ``image`` (cluster.update: Swarm's start-first rolling update,
    rolled back by Swarm on failure). Returns (done, why not)."""
    try:
        return cluster.update(service, image=image)
    except (cluster.ClusterError, swarm.EngineError, ValueError) as exc:
        return False, str(exc)


def remove(service: Service, number: int) -> str:
    """Removes revision ``number``'s Swarm service; returns "" or why it could not (the reconciler
    removes it later: it carries a revision no rollout owns)."""
    from workspaces.instance import portal_instance

    try:
        swarm.remove_service(cluster.revision_name(service, number), portal=portal_instance(),
                             base_url=service.environment.docker_url)
    except swarm.EngineError as exc:
        return str(exc)
    return ""

