"""Each service has its own request time limit (issue 13), bounded, by default the portal's
MLPORTAL_SCORING_TIMEOUT_SECONDS; the scoring server in each replica enforces it (504 naming it),
and changing it restarts the replicas with the new limit without downtime."""
from __future__ import annotations

import time

import pytest
from django.test import override_settings

from tests.deployments.conftest import SAMPLE_REQUEST, SCORE, call_container, wait_for, wait_settled

# The template's score.py, with run() taking 3 s.
SLOW_SCORE = SCORE + b"\n\n_fast_run = run\n\n\ndef run(input_df):\n    import time\n    time.sleep(3)\n    return _fast_run(input_df)\n"


@pytest.mark.docker
@pytest.mark.integration
def test_a_slow_run_answers_504_past_the_services_own_limit_and_passes_once_it_is_raised(
        deploy_worker, owner_api, outsider_api, create_realtime):
    created = create_realtime(owner_api, "slowpoke", score=SLOW_SCORE, request_timeout_s="1")
    assert created.status_code == 201, created.json()
    assert created.json()["request_timeout_s"] == 1 and created.json()["request_timeout"] == 1
    service = wait_for(owner_api, "slowpoke", ("healthy", "failed"))
    assert service["status"] == "healthy", service["error"]
    key = owner_api.get("/api/v1/services/slowpoke/keys/").json()["primary"]
    replica = service["containers"][0]

    started = time.monotonic()
    status, body = call_container(replica["host"], replica["port"], "/score", SAMPLE_REQUEST, key=key)
    assert status == 504, body
    assert body["error"]["code"] == "timeout" and "the 1 s request timeout" in body["error"]["message"]
    assert time.monotonic() - started < 2.9  # cut at the limit, not after run() finished
    # The worker goes on: the probes still answer at once.
    assert call_container(replica["host"], replica["port"], "/health", method="GET")[0] == 200

    # Out of bounds, not a number, an outsider: refused, nothing restarts.
    for bad, hint in ((100000, "between 0.1 and 600"), ("soon", "a number of seconds"), (0, "between 0.1 and 600")):
        res = owner_api.patch("/api/v1/services/slowpoke/", {"request_timeout_s": bad}, format="json")
        assert res.status_code == 400, res.json()
        assert hint in res.json()["error"]["fields"]["request_timeout_s"][0]
    assert outsider_api.patch("/api/v1/services/slowpoke/", {"request_timeout_s": 10}, format="json").status_code == 404
    assert owner_api.get("/api/v1/services/slowpoke/").json()["status"] == "healthy"

    res = owner_api.patch("/api/v1/services/slowpoke/", {"request_timeout_s": 10}, format="json")
    assert res.status_code == 202, res.json()
    service = wait_settled(owner_api, "slowpoke")
    assert service["status"] == "healthy" and not service["last_update_error"], service["last_update_error"]
    assert service["request_timeout_s"] == 10 and service["request_timeout"] == 10
    replica = service["containers"][0]
    assert call_container(replica["host"], replica["port"], "/score", SAMPLE_REQUEST, key=key) == (200, "0")


@pytest.mark.django_db
def test_the_default_is_the_portals_setting_and_a_service_value_wins(owner, workspace):
    from deployments.checks import check_request_timeout, effective_request_timeout
    from deployments.models import Environment, Service
    from deployments.worker import _container_env
    from registry.models import Image, Manifest

    environment = Environment.objects.create(workspace=workspace, name="local")
    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag="t:1")
    service = Service.objects.create(workspace=workspace, name="svc", environment=environment, image=image)
    assert _container_env(service)["MLPORTAL_REQUEST_TIMEOUT"] == "60"
    with override_settings(MLPORTAL_SCORING_TIMEOUT_SECONDS=2.5):
        assert _container_env(service)["MLPORTAL_REQUEST_TIMEOUT"] == "2.5" and effective_request_timeout(service) == 2.5
    service.request_timeout_s = 7.5
    assert _container_env(service)["MLPORTAL_REQUEST_TIMEOUT"] == "7.5"
    assert check_request_timeout(None) is None and check_request_timeout("") is None and check_request_timeout("12") == 12.0


@pytest.fixture
def healthy(workspace):
    from deployments.models import Environment, Service
    from registry.models import Image, Manifest

    environment = Environment.objects.create(workspace=workspace, name="local")
    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag="t:1", status="succeeded")
    return Service.objects.create(workspace=workspace, name="svc", environment=environment, image=image,
                                  status=Service.Status.HEALTHY)


@pytest.mark.django_db
def test_the_service_page_shows_and_sets_the_limit(page_client, owner, contributor, reader, healthy):
    from django.urls import reverse

    from deployments.models import Service

    page = page_client(owner).get(reverse("service-detail", args=[healthy.pk])).content.decode()
    assert 'data-testid="request-timeout">60 s' in page and 'data-testid="request-timeout-form"' in page
    url = reverse("service-request-timeout", args=[healthy.pk])
    page_client(reader).post(url, {"request_timeout_s": "5"})
    assert Service.objects.get(pk=healthy.pk).status == Service.Status.HEALTHY  # readers cannot
    res = page_client(contributor).post(url, {"request_timeout_s": "0"}, follow=True)
    assert "request_timeout_s must be between 0.1 and 600 seconds" in res.content.decode()
    res = page_client(contributor).post(url, {"request_timeout_s": "5"})
    assert res.status_code == 302
    assert Service.objects.get(pk=healthy.pk).pending["request_timeout_s"] == 5.0
