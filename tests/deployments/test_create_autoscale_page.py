"""The Create service page's two forms take Azure ML's autoscale settings (the ones the Autoscale
tab edits): an autoscaled service starts at its minimum with the settings on; each bad value is
refused next to its field with the limits in the message, and nothing is created (the one-shot
form stores no model, manifest or image either)."""
from __future__ import annotations

import io

import pytest
from django.conf import settings

from deployments.models import Service
from registry.models import Image, Manifest, Model

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(owner_api, create_realtime):
    assert create_realtime(owner_api, "first").status_code == 201
    Image.objects.update(status="succeeded", image_id="sha256:" + "0" * 64)
    return Image.objects.get()


def from_image(image, **fields) -> dict:
    return {"mode": "image", "name": "auto", "image": str(image.pk), "environment": "", "replicas": "", "cpus": "1",
            "memory_mb": "1024", "request_timeout_s": "", **fields}


def test_the_forms_show_the_autoscale_fields_with_their_limits(page_client, owner, image):
    html = page_client(owner).get("/services/new/").content.decode()
    cap = settings.MLPORTAL_MAX_REPLICAS
    for name in ("autoscale_enabled", "autoscale_min_replicas", "autoscale_max_replicas", "autoscale_target_utilization",
                 "autoscale_refresh_seconds", "autoscale_stable_seconds"):
        assert html.count(f'name="{name}"') == 2, name  # on the one-shot form and on the image form
    assert f"1 to {cap} (default 1)." in html and "1 to 100 (default 70)." in html and "at least 1 (default 1)." in html


def test_the_image_form_creates_an_autoscaled_service_at_its_minimum(page_client, owner, image):
    response = page_client(owner).post("/services/new/", from_image(
        image, autoscale_enabled="on", autoscale_min_replicas="2", autoscale_max_replicas="4",
        autoscale_target_utilization="60", autoscale_stable_seconds="30"), follow=True)
    assert "is being created" in response.content.decode()
    service = Service.objects.get(name="auto")
    assert service.replicas == 2 and service.autoscale == {
        "enabled": True, "min_replicas": 2, "max_replicas": 4, "target_utilization": 60, "refresh_seconds": 1,
        "stable_seconds": 30}
    assert service.autoscale_token is not None  # its autoscaler's tick chain is started
    assert any("Autoscaling on: 2 to 4 replicas, target 60%" in e.message for e in service.events.all())


def test_without_autoscaling_an_empty_replica_count_is_one(page_client, owner, image):
    page_client(owner).post("/services/new/", from_image(image))
    service = Service.objects.get(name="auto")
    assert service.replicas == 1 and not service.autoscale_enabled


@pytest.mark.parametrize("fields, field, words", [
    ({"autoscale_min_replicas": "5", "autoscale_max_replicas": "3"}, "autoscale_min_replicas",
     "autoscale_min_replicas (5) is above autoscale_max_replicas (3)"),
    ({"autoscale_max_replicas": "99"}, "autoscale_max_replicas", f"from 1 to {settings.MLPORTAL_MAX_REPLICAS}; got 99"),
    ({"autoscale_min_replicas": "0"}, "autoscale_min_replicas", "from 1 to"),
    ({"autoscale_target_utilization": "0"}, "autoscale_target_utilization", "from 1 to 100; got 0"),
    ({"autoscale_target_utilization": "150"}, "autoscale_target_utilization", "from 1 to 100; got 150"),
    ({"autoscale_refresh_seconds": "0"}, "autoscale_refresh_seconds", "at least 1 second"),
    ({"autoscale_stable_seconds": "99999"}, "autoscale_stable_seconds", "from 1 to 3600"),
    ({"autoscale_min_replicas": "two"}, "autoscale_min_replicas", "a whole number from 1 to"),
    ({"replicas": "3"}, "replicas", "exclude each other"),
])
def test_bad_autoscale_values_are_shown_next_to_the_field_and_create_nothing(page_client, owner, image, fields, field, words):
    before = Service.objects.count()
    response = page_client(owner).post("/services/new/", from_image(image, autoscale_enabled="on", **fields))
    assert response.status_code == 200
    errors = response.context["from_image"].errors
    assert field in errors, errors  # the field is marked, its limits beside it
    assert any(words in e for e in sum(errors.values(), [])), errors
    assert words in response.content.decode().replace("&#x27;", "'")
    assert Service.objects.count() == before


def test_the_one_shot_form_refuses_bad_autoscale_values_before_storing_anything(page_client, owner, workspace, churn):
    data = {"mode": "realtime", "name": "churnpred", "model_name": "", "environment": "", "replicas": "",
            "autoscale_enabled": "on", "autoscale_min_replicas": "4", "autoscale_max_replicas": "2"}
    for field, name, content in (("model_file", "model.pkl", churn["model"]), ("score_file", "score.py", churn["score"]),
                                 ("schema_file", "service_schema.json", churn["schema"])):
        handle = io.BytesIO(content)
        handle.name = name
        data[field] = handle
    response = page_client(owner).post("/services/new/", data)
    assert response.status_code == 200
    assert "is above autoscale_max_replicas (2)" in " ".join(response.context["realtime"].errors["autoscale_max_replicas"])
    assert not Service.objects.exists() and not Image.objects.exists() and not Manifest.objects.exists()
    assert not Model.objects.exists()
