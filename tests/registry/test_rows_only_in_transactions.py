"""``transaction.atomic()`` wraps row writes only (issue 11): an upload is stored before the
transaction starts and a Docker call holds no row lock. Each upload is read through a file object
that notes whether a transaction was open at each read; the image delete talks to an engine that
accepts and never answers, and the image row is locked from another connection meanwhile."""
import io
import pickle
import threading

import pytest
from django.db import connection, transaction

from tests.helpers import SilentEngine, wait_until
from tests.registry.conftest import REQUIREMENTS, SCORE

pytestmark = pytest.mark.django_db(transaction=True)


class WatchedUpload(io.BytesIO):
    """An upload that records, at each read, whether this thread's connection is in a transaction."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name
        self.in_transaction: list[bool] = []

    def read(self, *args):
        self.in_transaction.append(connection.in_atomic_block)
        return super().read(*args)


def test_a_model_upload_is_stored_before_any_transaction(owner, workspace):
    from registry.services import model_register_upload

    upload = WatchedUpload(pickle.dumps({"weights": [1, 2, 3]}), "model.pkl")
    model = model_register_upload(workspace=workspace, name="model.pkl", fileobj=upload, filename="model.pkl", user=owner)
    assert model.version == 1 and upload.in_transaction and not any(upload.in_transaction)


def test_the_one_shot_service_create_stores_the_model_before_its_transaction(owner, workspace, churn_schema):
    from deployments.models import Service
    from deployments.services import service_create_realtime

    upload = WatchedUpload(pickle.dumps({"weights": [1, 2, 3]}), "model.pkl")
    service, _ = service_create_realtime(workspace=workspace, name="churnpred", model_file=upload, model_filename="model.pkl",
                                         score=SCORE, schema=churn_schema, requirements=REQUIREMENTS, user=owner)
    assert Service.objects.filter(pk=service.pk, status=Service.Status.CREATING).exists()
    assert upload.in_transaction and not any(upload.in_transaction)


def test_a_project_file_upload_is_stored_before_its_rows_are_written(owner, workspace):
    from runs.models import ProjectFile
    from runs.services import project_create, project_files_upload

    project = project_create(workspace=workspace, name="p", user=owner)
    upload = WatchedUpload(b"print('hello')\n", "train.py")
    (row,) = project_files_upload(project=project, fileobj=upload, filename="train.py", user=owner)
    assert ProjectFile.objects.filter(pk=row.pk, path="train.py").exists()
    assert upload.in_transaction and not any(upload.in_transaction)


def test_an_image_delete_holds_no_row_lock_while_the_engine_works(owner, workspace, owner_api, settings):
    from deployments.checks import check_image_deployable
    from registry.models import Image, Manifest

    from core.errors import PortalError

    engine = SilentEngine()
    settings.MLPORTAL_DOCKER_URL = engine.url
    manifest = Manifest.objects.create(workspace=workspace, name="m", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="m", version=1, manifest=manifest, tag="mlportal/ws-m:1",
                                 status=Image.Status.SUCCEEDED, image_id="sha256:" + "2" * 64)
    answer = {}

    def delete():
        try:
            answer["response"] = owner_api.delete(f"/api/v1/images/{image.pk}/")
        finally:
            connection.close()

    thread = threading.Thread(target=delete)
    thread.start()
    try:
        wait_until(lambda: engine.accepted >= 1, timeout=30, message="the delete to call the engine")
        with transaction.atomic():  # another request locks the row while the engine call runs: no wait
            locked = Image.objects.select_for_update(nowait=True).get(pk=image.pk)
        assert locked.status == Image.Status.DELETING
        with pytest.raises(PortalError) as refused:  # and no service starts from an image being removed
            check_image_deployable(locked)
        assert "being deleted" in refused.value.message
    finally:
        engine.close()
        thread.join(timeout=60)
    response = answer["response"]
    assert response.status_code == 503 and "was not deleted" in response.json()["error"]["message"]
    image.refresh_from_db()
    assert image.status == Image.Status.SUCCEEDED  # the engine did not remove it: the image stays as it was
