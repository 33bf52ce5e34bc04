"""The lab's image step for real: the churn model registered, bundled into a manifest and built into
a Docker image by the Celery worker; the image then serves scores from a container.

The churn image is built once (module fixture) through the API and the real worker; what the
portal shows of that build (API, log, usage, page) is captured while its rows exist, and the rows
are removed again so the other tests start from an empty database.
"""
from __future__ import annotations

import http.client
import json
import os

import pandas as pd
import pytest
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.test import Client

from compute.containers import start_service_container, stop_container, wait_ready
from compute.engine import engine_status
from compute.images import image_exists, remove_image
from registry.models import Image, Manifest, Model
from tests.conftest import _client_for
from tests.helpers import wait_until
from tests.registry.conftest import REQUIREMENTS, SAMPLE_REQUEST, SCORE, upload
from tests.real_parts import missing_part
from workspaces import services as ws_services
from workspaces.models import Workspace

# django_db: the module fixture needs the test database set up (pytest-django sets up only what tests ask for).
pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.django_db]

KEYS = "registry-primary-key,registry-secondary-key"
AUTH = {"Authorization": "Bearer registry-primary-key"}
BUILD_TIMEOUT = 900  # a first build of the scikit-learn environment fills the wheel cache


def _drain_log(api, image_id: str) -> tuple[str, dict]:
    text, offset, last = "", 0, {}
    for _ in range(1000):
        last = api.get(f"/api/v1/images/{image_id}/log/?offset={offset}").json()
        text += last["text"]
        if offset == last["offset"]:
            break
        offset = last["offset"]
    return text, last


@pytest.fixture(scope="module")
def churn_build(django_db_setup, django_db_blocker, celery_worker_process, trained_churn, churn_schema):
    """Builds the churn image through the API and the worker; returns what the portal showed."""
    status = engine_status()
    if not status["ok"]:
        missing_part("Docker engine", status["error"])
    model_bytes = (trained_churn["app"] / "model.pkl").read_bytes()
    with django_db_blocker.unblock():
        user = get_user_model().objects.create_user("reg-builder", password="pw-for-tests-1")
        ws_services.workspace_create(name="regbuild", user=user)
        api = _client_for(user)
        model = api.post("/api/v1/models/", {"name": "model.pkl", "file": upload("model.pkl", model_bytes)}, format="multipart")
        assert model.status_code == 201, model.json()
        manifest = api.post("/api/v1/manifests/", {
            "name": "churnpred", "models": ["model.pkl:1"], "score_file": upload("score.py", SCORE),
            "schema_file": upload("service_schema.json", churn_schema),
            "requirements_file": upload("requirements.txt", REQUIREMENTS)}, format="multipart")
        assert manifest.status_code == 201, manifest.json()
        created = api.post("/api/v1/images/", {"manifest": "churnpred"}, format="json")
        assert created.status_code == 201, created.json()
        image_id = created.json()["id"]

        def finished():
            body = api.get(f"/api/v1/images/{image_id}/").json()
            return body if body["status"] in ("succeeded", "failed") else None

        final = wait_until(finished, timeout=BUILD_TIMEOUT, interval=0.3, message="the churn image build")
        log_text, log_end = _drain_log(api, image_id)
        usage = api.get(f"/api/v1/images/{image_id}/usage/").json()
        by_tag = api.get(f"/api/v1/images/{final['tag']}/").json()
        page = Client()
        page.force_login(user)
        html = page.get(f"/images/{image_id}/").content.decode()
        stored = [m.file for m in Model.objects.filter(workspace__name="regbuild")]
        stored += [info["storage"] for m in Manifest.objects.filter(workspace__name="regbuild") for info in m.files.values()]
        created_json = created.json()
        # Rows out again: the other tests expect an empty database.
        Image.objects.filter(workspace__name="regbuild").delete()
        Workspace.objects.filter(name="regbuild").delete()
        user.delete()
    yield {"created": created_json, "image": final, "log": log_text, "log_end": log_end, "usage": usage, "by_tag": by_tag,
           "html": html, "manifest": manifest.json(), "model": model.json()}
    for name in stored:
        default_storage.delete(name)
    remove_image(final["tag"])


@pytest.fixture(scope="module")
def churn_container(churn_build):
    image = churn_build["image"]
    assert image["status"] == "succeeded", image["error"] + "\n" + image["error_log_tail"]
    started = start_service_container(image=image["tag"], service_id="registry-test", replica=0,
                                      name=f"mlportal-registry-test-{os.getpid()}",
                                      env={"MLPORTAL_SERVICE_KEYS": KEYS, "MLPORTAL_SERVICE_NAME": "churnpred"})
    try:
        wait_ready(host=started["host"], port=started["port"], container_id=started["id"], timeout_s=90)
        yield started
    finally:
        stop_container(started["id"])


def call(container, method: str, path: str, body=None, headers=None):
    connection = http.client.HTTPConnection(container["host"], container["port"], timeout=30)
    try:
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data
    finally:
        connection.close()


@pytest.fixture(scope="module")
def records_100(trained_churn):
    frame = pd.read_csv(trained_churn["app"] / "data" / "CATelcoCustomerChurnTrainingSample.csv").head(100)
    return json.loads(frame.to_json(orient="records"))


# --- what the portal shows of the build -------------------------------------------------------

def test_creating_an_image_answers_201_queued_with_its_tag(churn_build):
    created = churn_build["created"]
    assert created["status"] == "queued" and created["tag"] == "mlportal/regbuild/churnpred:1"
    assert created["name"] == "churnpred" and created["version"] == 1


def test_the_build_succeeds_with_image_id_size_time_and_labels(churn_build):
    image = churn_build["image"]
    assert image["status"] == "succeeded", image["error"]
    assert image["image_id"].startswith("sha256:") and image["size"] > 100 * 1024 * 1024
    assert 0 < image["build_seconds"] < BUILD_TIMEOUT
    assert image["labels"]["mlportal.manifest_hash"] == churn_build["manifest"]["content_hash"]
    assert image["labels"]["mlportal.models"] == "model.pkl:1" and image["labels"]["mlportal.id"] == image["id"]
    assert image_exists(image["tag"])


def test_the_image_is_found_by_its_tag(churn_build):
    assert churn_build["by_tag"]["id"] == churn_build["image"]["id"]


def test_the_build_log_ends_done_with_the_whole_build(churn_build):
    log = churn_build["log"]
    assert "COPY app/ /app/" in log and "built mlportal/regbuild/churnpred:1" in log
    assert churn_build["log_end"]["done"] is True and churn_build["log_end"]["status"] == "succeeded"


def test_usage_gives_the_docker_run_line_and_a_curl_with_the_schema_example(churn_build):
    usage = churn_build["usage"]
    assert usage["docker_run"].startswith("docker run -p 127.0.0.1:5001:5001 -e MLPORTAL_SERVICE_KEYS=")
    assert usage["docker_run"].endswith(" mlportal/regbuild/churnpred:1")
    assert usage["scoring_path"] == "/score" and usage["sample_body"] == SAMPLE_REQUEST
    assert usage["curl"].startswith("curl -X POST http://127.0.0.1:5001/score") and '"callfailurerate": 0' in usage["curl"]


def test_the_image_page_shows_overview_log_and_usage(churn_build):
    html = churn_build["html"]
    for needle in ("mlportal/regbuild/churnpred:1", 'data-tab="log"', 'data-tab="usage"', "docker run -p 127.0.0.1:5001:5001",
                   'data-status="succeeded"', "/api/v1/images/"):
        assert needle in html


# --- the image serves the lab's requests -------------------------------------------------------

def test_the_container_is_ready(churn_container):
    assert call(churn_container, "GET", "/ready")[0] == 200


def test_the_labs_sample_record_scores_0(churn_container):
    assert call(churn_container, "POST", "/score", SAMPLE_REQUEST, AUTH) == (200, "0")


def test_a_batch_of_100_records_gets_100_predictions(churn_container, records_100):
    status, predictions = call(churn_container, "POST", "/score", {"input_df": records_100}, AUTH)
    assert status == 200 and len(predictions) == 100 and set(predictions) <= {"0", "1"}


def test_a_missing_column_a_wrong_type_and_a_non_json_body_each_give_400_naming_the_problem(churn_container):
    record = dict(SAMPLE_REQUEST["input_df"][0])
    del record["age"]
    status, body = call(churn_container, "POST", "/score", {"input_df": [record]}, AUTH)
    assert status == 400 and 'missing column "age"' in body["error"]["message"]
    wrong = dict(SAMPLE_REQUEST["input_df"][0], age="abc")
    status, body = call(churn_container, "POST", "/score", {"input_df": [wrong]}, AUTH)
    assert status == 400 and "input_df[0].age" in body["error"]["message"]
    status, body = call(churn_container, "POST", "/score", b"this is not json", AUTH)
    assert status == 400 and body["error"]["code"] == "invalid_json"


def test_a_wrong_key_gives_401(churn_container):
    status, body = call(churn_container, "POST", "/score", SAMPLE_REQUEST, {"Authorization": "Bearer nope"})
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_swagger_lists_the_29_input_fields(churn_container):
    status, document = call(churn_container, "GET", "/swagger.json")
    fields = document["components"]["schemas"]["ScoreRequest"]["properties"]["input_df"]["items"]["properties"]
    assert status == 200 and len(fields) == 29


def test_an_oip_v2_infer_call_gives_the_same_prediction(churn_container):
    status, metadata = call(churn_container, "GET", "/v2/models/churnpred")
    types = {t["name"]: t["datatype"] for t in metadata["inputs"]}
    record = SAMPLE_REQUEST["input_df"][0]
    request = {"id": "r1", "inputs": [{"name": k, "shape": [1], "datatype": types[k], "data": [v]} for k, v in record.items()]}
    status, body = call(churn_container, "POST", "/v2/models/churnpred/infer", request, AUTH)
    assert status == 200 and body["outputs"][0]["data"] == ["0"]
