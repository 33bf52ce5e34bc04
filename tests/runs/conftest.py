"""Fixtures of the runs tests: projects (blank and from the churn template), finished runs with
metrics and outputs made through the worker-side services, and the churn environment image shared
by every Docker test of the session."""
from __future__ import annotations

import io
import tarfile

import pytest
from django.conf import settings
from django.db import transaction

from runs import services, worker
from runs.metrics import run_record_metrics
from runs.models import Run


@pytest.fixture
def churn(owner, workspace):
    return services.project_create(workspace=workspace, name="churn_prediction", user=owner, template="churn")


@pytest.fixture
def blank(owner, workspace):
    project = services.project_create(workspace=workspace, name="scratch", user=owner)
    services.project_file_put(project=project, path="train.py", content=b"print('hello')\n", user=owner)
    return project


def make_tar(files: dict[str, bytes]) -> str:
    """A tar of `files` written to a temporary folder; returns its path (what compute hands back)."""
    import tempfile

    handle = tempfile.NamedTemporaryFile(suffix=".tar", delete=False)
    with tarfile.open(fileobj=handle, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    handle.close()
    return handle.name


@pytest.fixture
def finished_run():
    """finished_run(project, user, metrics={name: value or [(step, value)…]}, outputs={path: bytes}, status=…)
    -> a Run that went through the worker-side services as a worker would record it."""

    def make(project, user, *, metrics=None, outputs=None, status=Run.Status.COMPLETED, log=("hello",), script="train.py", args=None):
        # Claimed in the submit's own transaction: a transactional test's session worker would
        # otherwise take the run as soon as the commit sends its task (a CI run saw that race).
        with transaction.atomic():
            run = services.run_submit(project=project, script=script, args=args or [], target="docker", user=user)
            assert worker.run_claim(run_id=run.id, worker="tests") is not None
        worker.run_mark_running(run_id=run.id, image="mlportal-env:test")
        worker.run_append_log(run_id=run.id, workspace_id=run.workspace_id, lines=list(log))
        points = []
        for name, value in (metrics or {}).items():
            if isinstance(value, list):
                points += [{"name": name, "value": v, "step": step, "time": None} for step, v in value]
            else:
                points.append({"name": name, "value": value, "step": None, "time": None})
        run_record_metrics(run_id=run.id, workspace_id=run.workspace_id, points=points)
        if outputs:
            from pathlib import Path

            worker.run_store_outputs(run=run, tar_path=Path(make_tar(outputs)))
        worker.run_finish(run_id=run.id, status=status, exit_code=0 if status == Run.Status.COMPLETED else 1)
        run.refresh_from_db()
        return run

    return make


@pytest.fixture(scope="session")
def churn_env_image():
    """The environment image of the churn template's requirements, built once per session (and
    reused across sessions: its tag is a content hash)."""
    from compute.envimage import ensure_env_image
    from runs import catalog

    template = catalog.get_template("churn")
    requirements = [line.strip() for line in template.file_path("requirements.txt").read_text().splitlines() if line.strip()]
    return ensure_env_image(base_image=settings.MLPORTAL_BASE_IMAGE, requirements=requirements,
                            wheel_cache=settings.MLPORTAL_WHEEL_CACHE, log=lambda line: None,
                            base_url=settings.MLPORTAL_DOCKER_URL)
