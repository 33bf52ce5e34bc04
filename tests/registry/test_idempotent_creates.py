"""Issue 12: the creating POSTs of manifests, images and services honour an Idempotency-Key as runs
and models do (tests/platform/test_idempotency.py): the same key and body make one row and answer
the first result again; another body with that key is 409."""
from __future__ import annotations

import pickle

import pytest

from deployments.models import Service
from registry.models import Image, Manifest
from tests.registry.conftest import REQUIREMENTS, SCORE, upload

pytestmark = pytest.mark.django_db


def _manifest_body(churn_schema, name="churnpred"):
    return {"name": name, "models": ["model.pkl:1"], "score_file": upload("score.py", SCORE),
            "schema_file": upload("service_schema.json", churn_schema),
            "requirements_file": upload("requirements.txt", REQUIREMENTS)}


def test_manifests_images_and_services_are_created_once_per_key(owner_api, register_model, churn_schema):
    assert register_model(owner_api, content=pickle.dumps({"weights": [1.0]})).status_code == 201

    def post(path, body, key, **kwargs):
        return owner_api.post(path, body, HTTP_IDEMPOTENCY_KEY=key, **kwargs)

    made = [post("/api/v1/manifests/", _manifest_body(churn_schema), "m-1", format="multipart") for _ in range(2)]
    assert [r.status_code for r in made] == [201, 201], made[0].content[:300]
    assert made[0].json()["id"] == made[1].json()["id"] and made[1]["Idempotent-Replayed"] == "true"
    assert Manifest.objects.count() == 1
    other = post("/api/v1/manifests/", _manifest_body(churn_schema, name="another"), "m-1", format="multipart")
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_mismatch"

    images = [post("/api/v1/images/", {"manifest": "churnpred"}, "i-1", format="json") for _ in range(2)]
    assert [r.status_code for r in images] == [201, 201], images[0].content[:300]
    assert images[0].json()["id"] == images[1].json()["id"] and Image.objects.count() == 1

    Image.objects.update(status=Image.Status.SUCCEEDED, image_id="sha256:" + "0" * 64)
    ref = Image.objects.get().ref
    services = [post("/api/v1/services/", {"name": "churnsvc", "image": ref}, "s-1", format="json") for _ in range(2)]
    assert [r.status_code for r in services] == [201, 201], services[0].content[:300]
    assert services[0].json()["id"] == services[1].json()["id"] and Service.objects.count() == 1
    other = post("/api/v1/services/", {"name": "othersvc", "image": ref}, "s-1", format="json")
    assert other.status_code == 409 and Service.objects.count() == 1
