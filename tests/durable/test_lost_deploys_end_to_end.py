"""A deploy and an update whose messages a Redis restart lost are sent again by the maintenance
worker's sweep, and the service ends running the image asked for (the unit tests of
requeue_lost_deploys show the re-send; this is the whole path, with a real broker restarted
empty, a real worker and real containers)."""
from __future__ import annotations

import pytest

from tests.deployments.conftest import built_image, churn, wait_for  # noqa: F401
from tests.runtime.conftest import trained_churn  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.integration]

MAINTENANCE = ("maintenance", "builds,deploy,celery", 2)


def _lose_the_deploy_message(workers, broker) -> None:
    """The deploy queue holds the task (no worker takes it), then Redis restarts with nothing."""
    workers.wait(lambda: broker.length("deploy") >= 1, timeout=20, what="the deploy task to be queued")
    broker.kill()
    broker.start()
    assert broker.length("deploy") == 0


def test_a_deploy_and_an_update_lost_in_a_redis_restart_end_running(
        workers, broker, owner_api, built_image, remove_our_containers):  # noqa: F811
    workers.start(*MAINTENANCE, beat=True)
    first, second = built_image(owner_api, "churnpred"), built_image(owner_api, "churnpred-v2")
    workers.stop("maintenance")

    created = owner_api.post("/api/v1/services/", {"name": "churnpred", "image": first["id"]}, format="json")
    assert created.status_code in (201, 202), created.json()
    assert created.json()["status"] == "creating"
    _lose_the_deploy_message(workers, broker)
    workers.start(*MAINTENANCE, beat=True)
    service = wait_for(owner_api, "churnpred", ("healthy", "unhealthy", "failed"), timeout=240)
    assert service["status"] == "healthy" and service["image"] == "churnpred:1", service["error"]
    assert "re-sent the task of 1 service(s) in a transition" in workers.log("maintenance")
    workers.stop("maintenance")

    updated = owner_api.post("/api/v1/services/churnpred/update/", {"image": second["ref"]}, format="json")
    assert updated.status_code == 202 and updated.json()["status"] == "updating", updated.json()
    _lose_the_deploy_message(workers, broker)
    workers.start(*MAINTENANCE, beat=True)
    service = wait_for(owner_api, "churnpred", ("healthy", "unhealthy", "failed"), timeout=240)
    assert service["status"] == "healthy" and service["image"] == "churnpred-v2:1", service
    assert service["last_update_error"] == ""
    containers = [c for c in service["containers"] if c.get("state") in (None, "running")]
    assert containers, service["containers"]
