"""A deleted service's captured Parquet files go after its row (issue 16: they stayed for good).

The real chain first: the API's delete, the deploy task removing the row on the real worker, then
the removal task it sends on commit, on the same worker. Then what covers the gaps of that chain:
a deletion rolled back keeps the files; a service whose row went while no task ran (its workspace
deleted, a worker lost) has its folder swept by the collector's next round, and nothing else does.
"""
from __future__ import annotations

import datetime as dt

import pytest

from tests.helpers import wait_until
from tests.monitoring.test_monitoring_data import capture_dir, churn_records, make_capturing_service, spool_row  # noqa: F401 (capture_dir: a fixture)


def _store(service, prefix: str, n: int = 3) -> None:
    from monitoring import worker

    records = churn_records(n, seed=21)
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    assert worker.store(service, [spool_row(f"{prefix}{i}", [records[i]], "0", at=now - 5 + i) for i in range(n)]) == n


def _files(root, service_id) -> list[str]:
    folder = root / str(service_id)
    return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.docker
@pytest.mark.integration
def test_deleting_a_service_removes_its_capture_files_after_the_commit(deploy_worker, owner, workspace, owner_api):
    from deployments.models import Environment, Service
    from monitoring.models import CaptureFile
    from monitoring.store import capture_root

    # The worker process shares this capture folder (the data folder's), so no settings override.
    service = make_capturing_service(workspace, owner)
    kept = Service.objects.create(workspace=workspace, name="kept", environment=Environment.objects.get(workspace=workspace),
                                  image=service.image, status="healthy", created_by=owner)
    _store(service, "gone-")
    _store(kept, "kept-")
    root = capture_root()
    assert _files(root, service.pk) and _files(root, kept.pk)

    answer = owner_api.delete("/api/v1/services/churnpred/")
    assert answer.status_code == 202, answer.content
    wait_until(lambda: not Service.objects.filter(pk=service.pk).exists(), timeout=60, message="the service row to go")
    wait_until(lambda: not (root / str(service.pk)).exists(), timeout=60,
               message="the worker to remove the deleted service's capture folder")
    assert not CaptureFile.objects.filter(service_id=service.pk).exists()
    # The other service's files and rows are untouched.
    assert _files(root, kept.pk) and CaptureFile.objects.filter(service=kept).count() == len(_files(root, kept.pk))
    assert owner_api.get("/api/v1/services/kept/data/").json()["count"] == 3


@pytest.mark.django_db
def test_a_rolled_back_delete_keeps_the_files_and_a_missed_removal_is_swept(owner, workspace, capture_dir,
                                                                           django_capture_on_commit_callbacks):
    from django.db import transaction

    from deployments.models import Environment, Service
    from monitoring import cleanup, worker
    from monitoring.selectors import captured_rows
    from workspaces.services import workspace_create

    service = make_capturing_service(workspace, owner)
    _store(service, "a-")
    other_workspace = workspace_create(name="other", user=owner)
    environment = Environment.objects.create(workspace=other_workspace, name="local")
    other = Service.objects.create(workspace=other_workspace, name="other", environment=environment, image=service.image,
                                   status="healthy", created_by=owner)
    _store(other, "b-")
    stray = capture_dir / "not-a-service" / "note.txt"
    stray.parent.mkdir()
    stray.write_text("left alone")

    # Rolled back: nothing is sent and the files stay.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            Service.objects.filter(pk=service.pk).delete()
            raise RuntimeError("the deleting transaction fails")
    assert callbacks == [] and _files(capture_dir, service.pk)
    # The task never removes the files of a service that still exists.
    assert cleanup.service_capture_remove(service_id=str(service.pk)) == 0 and _files(capture_dir, service.pk)

    # The other workspace goes with its service; the removal task it sends is lost (not run).
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        other_workspace.delete()
    assert len(callbacks) == 1 and not Service.objects.filter(pk=other.pk).exists()
    assert _files(capture_dir, other.pk)
    # The collector's next round sweeps the orphaned folder, and only that one.
    worker.recover()
    assert not (capture_dir / str(other.pk)).exists()
    assert _files(capture_dir, service.pk) and stray.read_text() == "left alone"
    assert sorted(r["request_id"] for r in captured_rows(service)) == ["a-0", "a-1", "a-2"]
    # Run late, the lost task finds nothing left and fails on nothing.
    assert cleanup.service_capture_remove(service_id=str(other.pk)) == 0


def test_the_removal_task_is_on_the_maintenance_queue_and_runs_again_when_its_worker_is_lost():
    from django.conf import settings

    from monitoring.tasks import remove_service_capture

    assert settings.CELERY_TASK_ROUTES[remove_service_capture.name] == {"queue": "celery"}
    assert remove_service_capture.acks_late and remove_service_capture.reject_on_worker_lost
