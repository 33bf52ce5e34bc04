"""Creating POSTs honour an Idempotency-Key: the same key and body within 24 h return the first
result, a different body with that key is 409, and the CLI sends a key on every create."""
import io
import threading
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.client import encode_multipart
from django.utils import timezone

from runs import services as run_services
from runs.models import Project, Run
from workspaces.models import IdempotencyKey

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(owner, workspace):
    project = run_services.project_create(workspace=workspace, name="scratch", user=owner)
    run_services.project_file_put(project=project, path="train.py", content=b"print('hello')\n", user=owner)
    return project


def _submit(api, key, script="train.py"):
    return api.post("/api/v1/runs/", {"project": "scratch", "script": script}, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_the_same_key_on_three_posts_makes_one_run(owner_api, project):
    answers = [_submit(owner_api, "key-1") for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 201]
    assert Run.objects.count() == 1
    assert len({a.json()["id"] for a in answers}) == 1
    assert "Idempotent-Replayed" not in answers[0] and answers[2]["Idempotent-Replayed"] == "true"


def test_a_different_body_with_the_same_key_is_409(owner_api, project):
    assert _submit(owner_api, "key-2").status_code == 201
    other = _submit(owner_api, "key-2", script="other.py")
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_mismatch"
    assert Run.objects.count() == 1


def test_without_a_key_each_post_makes_a_run(owner_api, project):
    owner_api.post("/api/v1/runs/", {"project": "scratch", "script": "train.py"}, format="json")
    owner_api.post("/api/v1/runs/", {"project": "scratch", "script": "train.py"}, format="json")
    assert Run.objects.count() == 2


def test_keys_are_per_user(owner_api, contributor_api, project):
    assert _submit(owner_api, "shared").status_code == 201
    assert _submit(contributor_api, "shared").status_code == 201
    assert Run.objects.count() == 2


def test_an_error_frees_the_key_for_a_corrected_retry(owner_api, project):
    bad = owner_api.post("/api/v1/projects/", {"name": "Bad Name!"}, format="json", HTTP_IDEMPOTENCY_KEY="k3")
    assert bad.status_code == 400
    assert not IdempotencyKey.objects.filter(key="k3").exists()
    again = owner_api.post("/api/v1/projects/", {"name": "Bad Name!"}, format="json", HTTP_IDEMPOTENCY_KEY="k3")
    assert again.status_code == 400  # processed again, not replayed and not a 409


def test_after_24_hours_the_key_is_new_again(owner_api, project):
    assert _submit(owner_api, "old").status_code == 201
    IdempotencyKey.objects.filter(key="old").update(created_at=timezone.now() - timedelta(hours=25))
    assert _submit(owner_api, "old", script="other.py").status_code == 400  # processed: no such script
    assert not IdempotencyKey.objects.filter(key="old").exists()


def test_a_multipart_model_upload_is_replayed(owner_api, workspace):
    def upload():
        return owner_api.post("/api/v1/models/", {"name": "model.pkl", "file": io.BytesIO(b"pickle bytes" * 1000)},
                              format="multipart", HTTP_IDEMPOTENCY_KEY="upload-1")

    first, second = upload(), upload()
    assert first.status_code == 201, first.content[:300]
    assert second.status_code == 201 and second.json()["id"] == first.json()["id"]
    from registry.models import Model

    assert Model.objects.count() == 1


def _upload_framed(api, boundary: str, content: bytes, key: str = "upload-2"):
    body = encode_multipart(boundary, {"name": "model.pkl", "file": SimpleUploadedFile("model.pkl", content)})
    return api.post("/api/v1/models/", data=body, content_type=f"multipart/form-data; boundary={boundary}",
                    HTTP_IDEMPOTENCY_KEY=key)


def test_a_multipart_retry_framed_with_a_new_boundary_is_the_same_request(owner_api, workspace):
    # Clients pick a random boundary for every body they frame, so a retry of an upload differs
    # from the first only there: it is answered with the first result, not a 409.
    first = _upload_framed(owner_api, "first-boundary-1f3a", b"pickle bytes" * 1000)
    second = _upload_framed(owner_api, "another-boundary-77c0e9", b"pickle bytes" * 1000)
    assert first.status_code == 201, first.content[:300]
    assert second.status_code == 201 and second["Idempotent-Replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    from registry.models import Model

    assert Model.objects.count() == 1


def test_another_file_under_a_new_boundary_is_409(owner_api, workspace):
    assert _upload_framed(owner_api, "first-boundary-1f3a", b"pickle bytes" * 1000).status_code == 201
    other = _upload_framed(owner_api, "another-boundary-77c0e9", b"other bytes" * 1000)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_mismatch"
    # The same bytes in another part (another field name, or split differently) are another body too.
    moved = owner_api.post("/api/v1/models/", data=encode_multipart("b3", {"name": "model.pkl", "upload": SimpleUploadedFile(
        "model.pkl", b"pickle bytes" * 1000)}), content_type="multipart/form-data; boundary=b3",
        HTTP_IDEMPOTENCY_KEY="upload-2")
    assert moved.status_code == 409
    from registry.models import Model

    assert Model.objects.count() == 1


@pytest.mark.parametrize("chunk", [1, 7, 1024 * 1024])
def test_the_parts_digest_finds_delimiters_across_chunk_edges(chunk):
    from workspaces.idempotency import _PartsDigest

    def digest(boundary: str, content: bytes) -> str:
        body = encode_multipart(boundary, {"name": "m", "file": SimpleUploadedFile("m.bin", content)})
        parts = _PartsDigest(boundary.encode())
        for at in range(0, len(body), chunk):
            parts.update(body[at:at + chunk])
        return parts.hexdigest()

    content = bytes(range(256)) * 50 + b"--" + b"x" * 30  # a near-delimiter inside the file
    assert digest("BoUnDaRy-one", content) == digest("other-boundary-of-another-length", content)
    assert digest("BoUnDaRy-one", content) != digest("BoUnDaRy-one", content + b"!")


@pytest.mark.django_db(transaction=True)
def test_a_retry_by_a_real_http_client_is_replayed(live_server, owner, workspace):
    # requests (what the CLI and most scripts use) frames each send with a new random boundary.
    import requests

    from registry.models import Model
    from workspaces import services as workspace_services

    _, secret = workspace_services.token_create(user=owner, name="retry")

    def send():
        return requests.post(f"{live_server.url}/api/v1/models/", data={"name": "model.pkl"},
                             files={"file": ("model.pkl", io.BytesIO(b"pickle bytes" * 1000))},
                             headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": "requests-retry"},
                             timeout=30)

    first, second = send(), send()
    assert first.status_code == 201, first.text[:300]
    assert first.request.headers["Content-Type"] != second.request.headers["Content-Type"]  # new boundary
    assert second.status_code == 201 and second.headers["Idempotent-Replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert Model.objects.count() == 1


def test_a_bad_key_is_400(owner_api, project):
    response = _submit(owner_api, "x" * 300)
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["error"]["message"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_with_one_key_make_one_run(owner, workspace, api_for):
    project = run_services.project_create(workspace=workspace, name="scratch", user=owner)
    run_services.project_file_put(project=project, path="train.py", content=b"print(1)\n", user=owner)
    apis = [api_for(owner) for _ in range(8)]
    barrier = threading.Barrier(len(apis))
    codes = []

    def send(api):
        barrier.wait()
        try:
            codes.append(_submit(api, "race").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(api,)) for api in apis]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Run.objects.filter(project=project).count() == 1
    assert set(codes) <= {201, 409} and 201 in codes and 500 not in codes
