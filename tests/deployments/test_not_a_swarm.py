"""A cluster environment on an engine that is not a swarm manager, as the user meets it: the API
and the Environments page refuse it with a message saying how to make the engine one (and offer
init_swarm only where that can work), nothing is created; a cluster environment whose engine has
left its swarm since fails its service's deploy with that message on the service page.

The machine's own engine must stay a swarm manager (every suite deploys to it), so the engine here
is a stand-in: a small HTTP server on 127.0.0.1 (in the test allowlist) answering the Docker API's
``/version`` and ``/info`` like an engine, with the swarm state the test sets. Nothing else of
the portal is replaced."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployments.models import Environment, Service
from registry.models import Image

pytestmark = pytest.mark.django_db

MANAGER = {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "fake0node", "Nodes": 1, "Managers": 1}
NO_SWARM = {"LocalNodeState": "inactive", "ControlAvailable": False, "NodeID": "", "Nodes": 0, "Managers": 0}
WORKER_NODE = {"LocalNodeState": "active", "ControlAvailable": False, "NodeID": "fake1node", "Nodes": 0, "Managers": 0}


class FakeEngine:
    """An HTTP server that answers like a Docker engine on ``/version`` and ``/info``."""

    def __init__(self) -> None:
        self.swarm = dict(NO_SWARM)
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?")[0]
                if path.endswith("/version"):
                    self.answer(200, {"Version": "26.1.0", "ApiVersion": "1.45", "MinAPIVersion": "1.24", "Os": "linux"})
                elif path.endswith("/info"):
                    self.answer(200, {"ID": "fake", "Name": "fake-engine", "ServerVersion": "26.1.0", "Swarm": engine.swarm})
                else:
                    self.answer(404, {"message": f"page not found: {path}"})

            def do_POST(self):  # noqa: N802
                self.answer(503, {"message": "this stand-in engine does nothing"})

            def answer(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Api-Version", "1.45")
                self.send_header("Server", "Docker/26.1.0 (linux)")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"tcp://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def engine():
    with FakeEngine() as fake:
        yield fake


def test_the_api_refuses_an_engine_in_no_swarm_saying_how_to_make_it_one(owner_api, engine):
    response = owner_api.post("/api/v1/environments/", {"name": "production", "kind": "cluster", "engine_url": engine.url},
                              format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "not_a_swarm_manager" and "kind" in error["fields"] and "init_swarm" in error["fields"]
    message = error["message"]
    assert f"The Docker engine at {engine.url} is not in a swarm" in message
    assert "docker swarm init" in message and "docker swarm join" in message
    assert "set up the environment again with init_swarm" in message
    assert not Environment.objects.exists()


def test_a_worker_node_is_refused_without_the_offer_to_initialise_it(owner_api, engine):
    engine.swarm = dict(WORKER_NODE)
    for body in ({}, {"init_swarm": True}):  # a worker node cannot start a swarm of its own either
        response = owner_api.post("/api/v1/environments/", {"name": "production", "kind": "cluster",
                                                            "engine_url": engine.url, **body}, format="json")
        assert response.status_code == 400, response.json()
        message = response.json()["error"]["message"]
        assert "is a swarm worker node, not a manager" in message and "point the environment at a manager" in message
        assert "init_swarm" not in message
    assert not Environment.objects.exists()


def test_the_environments_page_shows_the_refusal_next_to_the_kind(page_client, owner, workspace, engine):
    response = page_client(owner).post("/environments/", {"name": "production", "kind": "cluster",
                                                          "engine_url": engine.url, "publish_address": "127.0.0.1"})
    assert response.status_code == 200
    html = response.content.decode().replace("&#x27;", "'")
    assert f"The Docker engine at {engine.url} is not in a swarm" in html and "docker swarm init" in html
    assert "Initialise a single-node swarm" in html
    assert not Environment.objects.exists()


def test_a_deploy_on_an_engine_that_left_its_swarm_fails_with_how_to_fix_it(owner_api, page_client, owner, engine,
                                                                             create_realtime):
    from deployments import worker

    engine.swarm = dict(MANAGER)
    made = owner_api.post("/api/v1/environments/", {"name": "production", "kind": "cluster", "engine_url": engine.url},
                          format="json")
    assert made.status_code == 201, made.json()
    assert made.json()["swarm"]["manager"] is True
    assert create_realtime(owner_api, "first").status_code == 201
    Image.objects.update(status="succeeded", image_id="sha256:" + "0" * 64)
    created = owner_api.post("/api/v1/services/", {"name": "churnpred", "image": "first:1", "environment": "production"},
                             format="json")
    assert created.status_code == 201, created.json()

    engine.swarm = dict(NO_SWARM)  # someone ran 'docker swarm leave' on it
    service = Service.objects.get(name="churnpred")
    assert worker.service_deploy(service_id=str(service.pk)) == Service.Status.FAILED  # what the deploy task does
    body = owner_api.get("/api/v1/services/churnpred/").json()
    assert body["status"] == "failed"
    assert "could not start it in cluster environment 'production'" in body["error"]
    assert f"The Docker engine at {engine.url} is not in a swarm" in body["error"] and "docker swarm init" in body["error"]
    page = page_client(owner).get(f"/services/{service.pk}/").content.decode().replace("&#x27;", "'")
    assert "is not in a swarm" in page and "docker swarm init" in page
    # The environment shows what the worker side saw (reads never ask the engine): the next check says it.
    from deployments.reconcile import environment_check

    environment_check(environment_id=str(service.environment_id))
    environment = owner_api.get("/api/v1/environments/production/").json()
    assert environment["swarm"]["state"] == "inactive" and environment["swarm"]["manager"] is False


def test_moving_a_cluster_asks_the_new_engine_at_the_door_and_keeps_what_it_said(owner_api, workspace, engine):
    # A cluster moves only to a swarm manager (the same door as its set-up), and what the new
    # engine said replaces what the old one had said.
    old = {"state": "active", "manager": True, "node_id": "old", "nodes": 3, "managers": 1, "error": ""}
    environment = Environment.objects.create(workspace=workspace, name="production", kind=Environment.Kind.CLUSTER,
                                             engine_url="tcp://127.0.0.1:9", swarm=old)
    refused = owner_api.patch(f"/api/v1/environments/{environment.pk}/", {"engine_url": engine.url}, format="json")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "not_a_swarm_manager"
    assert f"The Docker engine at {engine.url} is not in a swarm" in refused.json()["error"]["message"]
    environment.refresh_from_db()
    assert environment.engine_url == "tcp://127.0.0.1:9" and environment.swarm == old

    engine.swarm = dict(MANAGER)
    moved = owner_api.patch(f"/api/v1/environments/{environment.pk}/", {"engine_url": engine.url}, format="json")
    assert moved.status_code == 200, moved.json()
    environment.refresh_from_db()
    assert environment.engine_url == engine.url and environment.swarm["node_id"] == "fake0node"
    assert environment.swarm_checked_at is not None and environment.engine_checked_at is None


def test_a_cluster_label_that_makes_no_placement_constraint_is_refused_on_edit(owner_api, workspace):
    environment = Environment.objects.create(workspace=workspace, name="production", kind=Environment.Kind.CLUSTER)
    response = owner_api.patch(f"/api/v1/environments/{environment.pk}/", {"labels": {"node.zone": "a=b"}}, format="json")
    assert response.status_code == 400 and "labels" in response.json()["error"]["fields"], response.json()
    environment.refresh_from_db()
    assert environment.labels == {}
