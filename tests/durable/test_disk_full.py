"""A full disk never leaves partial files or rows behind. The data folder is a small tmpfs."""
from __future__ import annotations

import time

import pytest

from runs import services, worker
from runs.models import Run, RunOutput

pytestmark = [pytest.mark.docker]

FILL = (b"import os\nos.makedirs('outputs', exist_ok=True)\n"
        b"for i in range(4):\n    open(f'outputs/part{i}.bin', 'wb').write(os.urandom(12 * 1024 * 1024))\n"
        b"print('wrote 48 MiB')\n")


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_outputs_that_do_not_fit_fail_the_run_at_once_with_disk_full_and_leave_nothing(
        transactional_db, owner, workspace, small_disk, storage_on):
    root = storage_on(small_disk(30))
    project = services.project_create(workspace=workspace, name="filler", user=owner)
    services.project_file_put(project=project, path="fill.py", content=FILL, user=owner)
    run = services.run_submit(project=project, script="fill.py", args=[], target="docker", user=owner)
    before = _files(root)
    started = time.monotonic()
    assert worker.execute(run.id) == Run.Status.FAILED
    assert time.monotonic() - started < 90  # the issue: the stream stayed open, removal hung 300 s
    run.refresh_from_db()
    assert run.status_reason.startswith("disk full: the portal's storage has no room for its outputs"), run.status_reason
    assert not RunOutput.objects.filter(run=run).exists()
    assert _files(root) == before  # every output file it had written is gone again


def _upload(name: str, size: int):
    import io

    handle = io.BytesIO(b"\0" * size)
    handle.name = name
    return handle


def test_an_upload_that_hits_a_full_disk_answers_507_and_leaves_no_file_and_no_row(
        owner_api, owner, workspace, small_disk, storage_on):
    from registry.models import Model
    from runs.models import Project, ProjectFile

    root = storage_on(small_disk(30))
    res = owner_api.post("/api/v1/models/", {"name": "model.pkl", "file": _upload("model.pkl", 40 * 1024 * 1024)},
                         format="multipart")
    assert res.status_code == 507, res.content
    error = res.json()["error"]
    assert error["code"] == "storage_full"
    assert error["message"].startswith("The portal's storage is full (")
    assert "nothing was stored" in error["message"]
    assert _files(root) == [] and not Model.objects.exists()

    # The disk is as free as before, so the next request works (the issue: project create failed too).
    res = owner_api.post("/api/v1/projects/", {"name": "after"}, format="json")
    assert res.status_code == 201, res.json()
    project = Project.objects.get(name="after")
    res = owner_api.post(f"/api/v1/projects/{project.id}/upload/",
                         {"file": _upload("big.csv", 40 * 1024 * 1024), "path": "data/big.csv"}, format="multipart")
    assert res.status_code == 507 and res.json()["error"]["code"] == "storage_full", res.content
    assert not ProjectFile.objects.filter(project=project, path="data/big.csv").exists()
    assert all(not name.endswith("big.csv") for name in _files(root))
    res = owner_api.post("/api/v1/models/", {"name": "small.pkl", "file": _upload("small.pkl", 1024)}, format="multipart")
    assert res.status_code == 201
