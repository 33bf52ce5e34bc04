"""Fixtures of the pipelines tests: a service recorded straight in the database (for the request
side and the worker's step logic, no engine), and the deployments tests' real-parts helpers."""
from __future__ import annotations

import hashlib

import pytest

from tests.deployments.conftest import (  # noqa: F401 (shared fixtures)
    churn, create_realtime, deploy_worker, storage_root, trained_churn,
)
from tests.runs.conftest import churn_env_image, finished_run, make_tar  # noqa: F401

CHURN_SCRIPT = "CATelcoCustomerChurnModelingWithoutDprep.py"


@pytest.fixture
def project(owner, workspace):
    from runs import services

    project = services.project_create(workspace=workspace, name="churn_prediction", user=owner)
    services.project_file_put(project=project, path="train.py", content=b"print('training')\n", user=owner)
    return project


@pytest.fixture
def recorded_service(owner, workspace):
    """recorded_service(name="churnpred", run=None, workspace=…, user=…) -> a healthy Service row
    serving model.pkl v1 (made by ``run`` when given) through a succeeded image; no container."""
    from deployments.models import Environment, Service
    from registry.models import Image, Manifest, ManifestModel, Model

    def make(name: str = "churnpred", *, run=None, ws=None, user=None):
        ws, user = ws or workspace, user or owner
        model = Model.objects.create(workspace=ws, name="model.pkl", version=1, file_name="model.pkl", file="x/model.pkl",
                                     size=3, sha256=hashlib.sha256(b"abc").hexdigest(), run=run,
                                     project=run.project if run else None, created_by=user)
        manifest = Manifest.objects.create(workspace=ws, name=name, version=1, files={}, content_hash="0" * 64,
                                           created_by=user)
        ManifestModel.objects.create(manifest=manifest, model=model)
        image = Image.objects.create(workspace=ws, name=name, version=1, manifest=manifest, tag=f"mlportal/x-{name}:1",
                                     status=Image.Status.SUCCEEDED, created_by=user)
        environment, _ = Environment.objects.get_or_create(workspace=ws, name="local")
        return Service.objects.create(workspace=ws, name=name, environment=environment, image=image,
                                      status=Service.Status.HEALTHY, primary_key="k1", secondary_key="k2",
                                      proxy_key="k3", created_by=user)

    return make


@pytest.fixture
def register_model_api():
    """register_model_api(api) -> the response of uploading a small model file as model.pkl."""
    import io

    def register(api):
        handle = io.BytesIO(b"not really a pickle")
        handle.name = "model.pkl"
        return api.post("/api/v1/models/", {"name": "model.pkl", "file": handle}, format="multipart")

    return register
