"""Deleting a service removes every container; deploys that cannot work end in `failed` with the
reason (an unreachable engine, an init() that raises, an image that does not build)."""
from __future__ import annotations

import os

import pytest

from compute.images import image_exists
from deployments.models import Service
from registry.models import Image
from tests.deployments.conftest import BROKEN_SCORE, service_containers, wait_for
from tests.helpers import wait_until
from workspaces.models import Activity

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def test_deleting_removes_every_container_then_the_service_and_frees_its_image(deploy_worker, owner_api, create_realtime):
    # A name of its own: on an engine shared with other portals, an image tag another portal's
    # container runs is (rightly) not removed.
    name = f"churn-gone-{os.getpid()}"
    create_realtime(owner_api, name, replicas=2)
    service = wait_for(owner_api, name, ("healthy", "failed"))
    assert service["status"] == "healthy" and len(service_containers(service["id"])) == 2
    assert image_exists(service["image_tag"])
    response = owner_api.delete(f"/api/v1/services/{name}/")
    assert response.status_code == 202 and response.json()["status"] == "deleting"
    wait_until(lambda: owner_api.get(f"/api/v1/services/{service['id']}/").status_code == 404, timeout=60,
               message="the service to be gone")
    assert service_containers(service["id"]) == []
    assert Activity.objects.filter(verb="service.deleted", target_id=service["id"]).exists()
    # Nothing else used its image: the engine's image and its record go too, once the row is gone
    # (issue 14: deleted services left their images on the engine for good).
    wait_until(lambda: not image_exists(service["image_tag"]) and not Image.objects.filter(pk=service["image_id"]).exists(),
               timeout=60, message="the deleted service's image to be removed from the engine")
    assert owner_api.get(f"/api/v1/images/{service['image_id']}/").status_code == 404
    assert Activity.objects.get(verb="image.deleted", target_id=service["image_id"]).detail["by"] == f"service {name} deleted"
    # A deleted service uses no environment any more.
    assert owner_api.delete("/api/v1/environments/local/").status_code == 204


def test_an_unreachable_engine_fails_the_deploy_with_the_engines_error(deploy_worker, owner_api, built_image):
    image = built_image(owner_api, "churnpred")
    owner_api.post("/api/v1/environments/", {"name": "remote", "engine_url": "tcp://127.0.0.1:1"}, format="json")
    created = owner_api.post("/api/v1/services/", {"name": "churnpred", "image": image["id"], "environment": "remote"},
                             format="json")
    assert created.status_code == 201, created.json()
    failed = wait_for(owner_api, "churnpred", ("healthy", "failed"), timeout=120)
    assert failed["status"] == "failed"
    assert "Docker engine unreachable at tcp://127.0.0.1:1" in failed["error"] and "'remote'" in failed["error"]
    assert failed["steps"][-1]["status"] == "failed" and failed["steps"][-1]["error"] == failed["error"]
    # Nothing ever ran there, so it deletes without the engine.
    assert owner_api.delete("/api/v1/services/churnpred/").status_code == 202
    wait_until(lambda: not Service.objects.exists(), timeout=60, message="the failed service to be deleted")


def test_an_init_that_raises_fails_the_deploy_with_its_error_and_leaves_no_container(
        deploy_worker, owner_api, create_realtime):
    create_realtime(owner_api, "broken", score=BROKEN_SCORE)
    failed = wait_for(owner_api, "broken", ("healthy", "failed"))
    assert failed["status"] == "failed"
    assert "exited with code 3" in failed["error"] and "RuntimeError: cannot load the model" in failed["error"]
    assert [s["status"] for s in failed["steps"]] == ["succeeded", "succeeded", "succeeded", "failed"]
    assert service_containers(failed["id"]) == [] and failed["containers"] == []


def test_an_image_that_does_not_build_fails_the_service_naming_the_build(deploy_worker, owner_api, create_realtime):
    create_realtime(owner_api, "churnpred", requirements=b"mlportal-no-such-package-anywhere==0.0.1\n")
    failed = wait_for(owner_api, "churnpred", ("healthy", "failed"))
    assert failed["status"] == "failed" and "image churnpred:1 failed to build" in failed["error"]
    assert failed["steps"][2]["status"] == "failed"
