"""Engine URLs and publish addresses are set by workspace owners only, to hosts the portal's
allowlist names; loopback, link-local, 0.0.0.0 and the portal's own addresses are refused unless
listed, ssh:// unless allowed; errors never repeat what a remote port answered, and nothing (the
reconciler, a page) ever connects to an address that is not allowed."""
from __future__ import annotations

import socket
import threading

import pytest

from compute.engine import EngineNotAllowed, engine_status, get_client
from deployments import hosts
from deployments.models import Environment

pytestmark = pytest.mark.django_db


@pytest.fixture
def strict(settings):
    """The portal's defaults: no remote engine host, publish on 127.0.0.1 only, no ssh."""
    settings.MLPORTAL_ENGINE_HOSTS = []
    settings.MLPORTAL_PUBLISH_ADDRESSES = ["127.0.0.1"]
    settings.MLPORTAL_ENGINE_SSH = False
    return settings


class Listener:
    """A TCP port on this host that counts the connections it gets and answers each with ``reply``."""

    def __init__(self, reply: bytes = b""):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.reply = reply
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                if self.reply:
                    try:
                        conn.recv(4096)
                        conn.sendall(self.reply)
                    except OSError:
                        pass

    def close(self):
        self.server.close()


@pytest.fixture
def listener():
    made = []

    def make(reply: bytes = b""):
        made.append(Listener(reply))
        return made[-1]

    yield make
    for item in made:
        item.close()


def own_address() -> str:
    return next(str(a) for a in sorted(hosts.own_addresses(), key=str)
                if a.version == 4 and not a.is_loopback)


def _create(api, **fields):
    return api.post("/api/v1/environments/", {"name": "remote", **fields}, format="json")


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:5432", "tcp://127.0.0.1:6379", "tcp://localhost:8000",
                                 "tcp://169.254.169.254:80", "tcp://0.0.0.0:2375", "tcp://[::1]:2375",
                                 "tcp://10.0.0.5:2375"])
def test_engine_urls_outside_the_allowlist_are_refused(owner_api, strict, url):
    response = _create(owner_api, engine_url=url)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "not_allowed" and "MLPORTAL_ENGINE_HOSTS" in error["message"]
    assert not Environment.objects.filter(name="remote").exists()


def test_the_portals_own_address_is_refused_even_inside_a_listed_network(owner_api, strict):
    address = own_address()
    strict.MLPORTAL_ENGINE_HOSTS = ["0.0.0.0/0"]
    response = _create(owner_api, engine_url=f"tcp://{address}:8000")
    assert response.status_code == 400 and "portal's own address" in response.json()["error"]["message"]
    assert _create(owner_api, engine_url="tcp://127.0.0.1:6379").status_code == 400  # loopback: not by 0.0.0.0/0 either


def test_a_listed_host_is_accepted_and_so_is_loopback_when_listed_itself(owner_api, strict):
    strict.MLPORTAL_ENGINE_HOSTS = ["10.0.0.0/8", "127.0.0.1"]
    assert _create(owner_api, engine_url="tcp://10.1.2.3:2375").status_code == 201
    response = owner_api.post("/api/v1/environments/", {"name": "loop", "engine_url": "tcp://127.0.0.1:2375"}, format="json")
    assert response.status_code == 201


def test_ssh_is_refused_unless_allowed(owner_api, strict):
    response = _create(owner_api, engine_url="ssh://root@127.0.0.1")
    assert response.status_code == 400 and "MLPORTAL_ENGINE_SSH" in response.json()["error"]["message"]
    strict.MLPORTAL_ENGINE_SSH = True
    assert _create(owner_api, engine_url="ssh://root@127.0.0.1").status_code == 400  # loopback still
    strict.MLPORTAL_ENGINE_HOSTS = ["10.0.0.5"]
    assert _create(owner_api, engine_url="ssh://deploy@10.0.0.5").status_code == 201


@pytest.mark.parametrize("address", ["0.0.0.0", "169.254.1.1", "10.0.0.5", "::"])
def test_publish_addresses_outside_the_allowlist_are_refused(owner_api, strict, address):
    response = _create(owner_api, publish_address=address)
    assert response.status_code == 400
    assert "MLPORTAL_PUBLISH_ADDRESSES" in response.json()["error"]["message"]


def test_only_owners_choose_engines_and_publish_addresses(contributor_api, owner_api, workspace, strict):
    strict.MLPORTAL_ENGINE_HOSTS = ["10.0.0.0/8"]
    assert _create(contributor_api, engine_url="tcp://10.0.0.5:2375").status_code == 403
    assert _create(contributor_api, publish_address="10.0.0.5").status_code == 403
    assert _create(contributor_api).status_code == 201  # the workers' own engine, on 127.0.0.1: fine
    assert owner_api.patch("/api/v1/environments/remote/", {"engine_url": "tcp://10.0.0.5:2375"}, format="json").status_code == 200
    assert contributor_api.patch("/api/v1/environments/remote/", {"engine_url": ""}, format="json").status_code == 403


def test_no_connection_is_ever_opened_to_an_address_that_is_not_allowed(strict, listener):
    port = listener()
    with pytest.raises(EngineNotAllowed):
        get_client(f"tcp://127.0.0.1:{port.port}")
    status = engine_status(f"tcp://127.0.0.1:{port.port}")
    assert status["ok"] is False and "Not connecting" in status["error"]
    assert port.connections == 0


def test_the_reconciler_and_the_pages_never_probe_a_disallowed_engine(owner, workspace, page_client, strict, listener):
    from deployments.reconcile import services_reconcile

    port = listener()
    # Set before the allowlist narrowed (or written behind the portal's back): the row exists.
    environment = Environment.objects.create(workspace=workspace, name="sneaky", engine_url=f"tcp://127.0.0.1:{port.port}",
                                             created_by=owner)
    summary = services_reconcile()
    client = page_client(owner)
    assert client.get(f"/environments/{environment.pk}/").status_code == 200
    assert client.get("/environments/").status_code == 200
    assert port.connections == 0
    assert f"tcp://127.0.0.1:{port.port}" in summary["unreachable"]


@pytest.mark.parametrize("reply", [b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\nSECRET-BANNER of a web app.",
                                   b"-ERR SECRET-BANNER unknown command\r\n",
                                   b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 34\r\n\r\n<h1>SECRET-BANNER not found</h1>"])
def test_errors_never_repeat_what_a_remote_port_answered(settings, listener, reply):
    settings.MLPORTAL_ENGINE_HOSTS = ["127.0.0.1"]
    port = listener(reply)
    status = engine_status(f"tcp://127.0.0.1:{port.port}")
    assert status["ok"] is False
    assert "SECRET" not in status["error"] and "ERR" not in status["error"] and "<h1>" not in status["error"]
    assert port.connections >= 1  # it was allowed, so it was asked
