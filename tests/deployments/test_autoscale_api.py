"""Autoscale settings through the API (no worker: nothing starts): Azure ML's defaults, the bad
input list answered 400 naming the field with nothing created, updates that keep what they do not
name, fixed scaling refused while autoscaled, and the Kubernetes export carrying the settings."""
from __future__ import annotations

import pytest
import yaml

from deployments.models import Service, ServiceLoad
from registry.models import Image

pytestmark = pytest.mark.django_db


@pytest.fixture
def built(owner_api, create_realtime):
    response = create_realtime(owner_api, "churnpred")
    assert response.status_code == 201, response.json()
    Image.objects.update(status="succeeded", image_id="sha256:" + "0" * 64)
    return response.json()


def test_autoscale_on_create_takes_azure_mls_defaults_and_starts_at_min(owner_api, built):
    response = owner_api.post("/api/v1/services/", {"name": "auto", "image": "churnpred:1", "autoscale_enabled": True,
                                                    "autoscale_min_replicas": 2}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["autoscale"] == {"enabled": True, "min_replicas": 2, "max_replicas": 10, "target_utilization": 70,
                                 "refresh_seconds": 1, "stable_seconds": 60}
    assert body["replicas"] == 2
    service = Service.objects.get(name="auto")
    assert service.autoscale_token is not None
    assert any("Autoscaling on: 2 to 10 replicas, target 70%" in e.message for e in service.events.all())
    assert not any("MLPORTAL_MAX_REPLICAS" in e.message for e in service.events.all())


def test_a_portal_cap_below_azure_mls_default_maximum_is_the_default_and_the_event_says_so(owner_api, built, settings):
    settings.MLPORTAL_MAX_REPLICAS = 6
    response = owner_api.post("/api/v1/services/", {"name": "auto", "image": "churnpred:1", "autoscale_enabled": True},
                              format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["autoscale"]["max_replicas"] == 6
    messages = [e.message for e in Service.objects.get(name="auto").events.all()]
    assert any("Autoscaling on: 1 to 6 replicas" in m and "MLPORTAL_MAX_REPLICAS, 6, below Azure ML's default of 10" in m
               for m in messages), messages


@pytest.mark.parametrize("fields, field, words", [
    ({"autoscale_min_replicas": 5, "autoscale_max_replicas": 3}, "autoscale_min_replicas", "is above autoscale_max_replicas"),
    ({"autoscale_target_utilization": 0}, "autoscale_target_utilization", "from 1 to 100"),
    ({"autoscale_target_utilization": 150}, "autoscale_target_utilization", "from 1 to 100"),
    ({"autoscale_refresh_seconds": 0}, "autoscale_refresh_seconds", "at least 1 second"),
    ({"replicas": 3}, "replicas", "exclude each other"),
])
def test_bad_autoscale_settings_answer_400_and_create_nothing(owner_api, built, fields, field, words):
    before = Service.objects.count()
    response = owner_api.post("/api/v1/services/", {"name": "auto", "image": "churnpred:1", "autoscale_enabled": True,
                                                    **fields}, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "invalid_autoscale" and field in error["fields"] and words in error["message"]
    assert Service.objects.count() == before


def test_the_one_shot_create_refuses_bad_settings_before_storing_anything(owner_api, create_realtime):
    response = create_realtime(owner_api, "auto", autoscale_enabled="true", autoscale_min_replicas="4",
                               autoscale_max_replicas="2")
    assert response.status_code == 400 and "autoscale_max_replicas" in response.json()["error"]["fields"]
    assert not Service.objects.exists() and not Image.objects.exists()


def test_an_update_changes_only_what_it_names_and_fixed_scaling_waits_until_it_is_off(owner_api, reader_api, outsider_api, built):
    on = owner_api.post("/api/v1/services/churnpred/autoscale/", {"autoscale_enabled": True, "autoscale_max_replicas": 3,
                                                                  "autoscale_stable_seconds": 20}, format="json")
    assert on.status_code == 200, on.json()
    assert on.json()["settings"] == {"enabled": True, "min_replicas": 1, "max_replicas": 3, "target_utilization": 70,
                                     "refresh_seconds": 1, "stable_seconds": 20}
    target = owner_api.post("/api/v1/services/churnpred/autoscale/", {"autoscale_target_utilization": 50}, format="json")
    assert target.json()["settings"]["max_replicas"] == 3 and target.json()["settings"]["target_utilization"] == 50
    bad = owner_api.post("/api/v1/services/churnpred/autoscale/", {"autoscale_min_replicas": 4}, format="json")
    assert bad.status_code == 400 and "is above autoscale_max_replicas (3)" in bad.json()["error"]["message"]
    Service.objects.update(status="healthy")
    scale = owner_api.post("/api/v1/services/churnpred/scale/", {"replicas": 2}, format="json")
    assert scale.status_code == 409 and scale.json()["error"]["code"] == "autoscaled"
    assert reader_api.post("/api/v1/services/churnpred/autoscale/", {"autoscale_enabled": False}, format="json").status_code == 403
    assert outsider_api.get("/api/v1/services/churnpred/autoscale/").status_code == 404
    off = owner_api.post("/api/v1/services/churnpred/autoscale/", {"autoscale_enabled": "false"}, format="json")
    assert off.json()["settings"]["enabled"] is False
    assert owner_api.post("/api/v1/services/churnpred/scale/", {"replicas": 2}, format="json").status_code == 202


@pytest.mark.parametrize("fields, field, words", [
    ({"autoscale_min_replicas": 5}, "autoscale_min_replicas", "autoscale_min_replicas (5) is above autoscale_max_replicas (4)"),
    ({"autoscale_target_utilization": 0}, "autoscale_target_utilization", "must be from 1 to 100; got 0"),
    ({"autoscale_target_utilization": 101}, "autoscale_target_utilization", "must be from 1 to 100; got 101"),
    ({"autoscale_refresh_seconds": 0.5}, "autoscale_refresh_seconds", "must be at least 1 second; got 0.5"),
    ({"autoscale_max_replicas": 11}, "autoscale_max_replicas", "must be from 1 to 10; got 11"),
])
def test_a_bad_update_is_refused_by_the_api_and_the_autoscale_tab_and_changes_nothing(owner_api, page_client, owner, built,
                                                                                       fields, field, words):
    assert owner_api.post("/api/v1/services/churnpred/autoscale/", {"autoscale_enabled": True, "autoscale_max_replicas": 4},
                          format="json").status_code == 200
    service = Service.objects.get()
    before, events = service.autoscale, service.events.count()
    api = owner_api.post("/api/v1/services/churnpred/autoscale/", fields, format="json")
    assert api.status_code == 400, api.json()
    error = api.json()["error"]
    assert error["code"] == "invalid_autoscale" and field in error["fields"] and words in error["message"], error
    page = page_client(owner).post(f"/services/{service.pk}/autoscale/", {"autoscale_enabled": "true",
                                                                         **{k: str(v) for k, v in fields.items()}}, follow=True)
    assert words in page.content.decode().replace("&#x27;", "'")
    service.refresh_from_db()
    assert service.autoscale == before and service.events.count() == events


def test_the_samples_come_back_for_the_chart(owner_api, built):
    from django.utils import timezone

    service = Service.objects.get()
    ServiceLoad.objects.create(service=service, at=timezone.now(), replicas=2, workers=2, busy=1.5, utilization=75.0,
                               desired=3)
    body = owner_api.get("/api/v1/services/churnpred/autoscale/?minutes=5").json()
    assert [(s["replicas"], s["utilization"], s["desired"]) for s in body["samples"]] == [(2, 75.0, 3)]
    assert owner_api.get("/api/v1/services/churnpred/autoscale/?minutes=0").status_code == 400


def test_the_kubernetes_export_carries_the_autoscale_settings(owner_api, built):
    owner_api.post("/api/v1/services/churnpred/autoscale/", {"autoscale_enabled": True, "autoscale_min_replicas": 2,
                                                             "autoscale_max_replicas": 6, "autoscale_target_utilization": 60,
                                                             "autoscale_stable_seconds": 45}, format="json")
    text = owner_api.get("/api/v1/services/churnpred/export/?format=kubernetes").content.decode()
    hpa = [doc for doc in yaml.safe_load_all(text) if doc and doc["kind"] == "HorizontalPodAutoscaler"][0]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert hpa["spec"]["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 45}
