"""/healthz reports database, broker, worker and Docker engine, each up or down with the reason."""
import pytest

from mlportal import health

pytestmark = pytest.mark.django_db


def test_healthz_reports_each_part_as_json(client):
    response = client.get("/healthz?format=json")
    report = response.json()
    assert set(report["parts"]) == {"database", "broker", "worker", "docker"}
    assert report["parts"]["database"]["ok"] is True
    assert response.status_code == (200 if report["ok"] else 503)


def test_the_api_healthz_answers_json(owner_api):
    report = owner_api.get("/api/v1/healthz/").json()
    assert "parts" in report


def test_a_missing_worker_is_reported_down_with_the_reason(settings):
    # No worker consumes this broker folder/queue in a plain unit test.
    part = health.check_worker()
    if part["ok"]:
        pytest.skip("a worker is answering on this broker (integration run)")
    assert "no Celery worker answered" in part["detail"]


def test_an_unreachable_broker_is_reported_down():
    part = health.check_broker("redis://127.0.0.1:1/0")
    assert part["ok"] is False and "broker unreachable at redis://127.0.0.1:1/0" in part["detail"]


@pytest.mark.docker
def test_the_docker_engine_is_reported_up():
    part = health.check_docker()
    assert part["ok"] is True, part
    assert part["detail"].startswith("Docker ")


def test_an_unreachable_docker_engine_is_reported_down_with_its_address(settings):
    settings.MLPORTAL_DOCKER_URL = "tcp://127.0.0.1:1"
    part = health.check_docker()
    assert part["ok"] is False
    assert "127.0.0.1:1" in part["detail"]


def test_a_broken_database_is_reported_down(monkeypatch):
    from django.db import connection

    def broken_cursor(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(connection, "cursor", broken_cursor)
    part = health.check_database()
    assert part == {"ok": False, "detail": "database unreachable: disk on fire"}


def test_the_page_shows_a_down_part_and_answers_503(client, owner, settings):
    settings.MLPORTAL_DOCKER_URL = "tcp://127.0.0.1:1"
    client.force_login(owner)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "docker" in response.content.decode() and "down" in response.content.decode()


@pytest.mark.integration
def test_a_running_worker_is_reported_up(celery_worker):
    part = health.check_worker()
    assert part["ok"] is True and "test-worker" in part["detail"]
