"""``transaction.atomic()`` wraps row writes only (issue 11): an upload is stored before the
transaction starts. Each upload is read through a file object that notes whether a transaction was
open at each read. (An image delete makes no Docker call at all in the request: its engine image
goes after the commit, in a task: test_image_delete_after_commit.)"""
import io
import pickle

import pytest
from django.db import connection

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
