"""Issue 16, drift on demand: ``POST drift/`` answers at once with a job (the request never reads
the capture or runs scipy); the maintenance worker computes it, writing its step and progress;
the page and the CLI poll the job. One open job per service; a job whose worker went silent is
given up. The first test runs the task in this process; the last one on the real Celery worker."""
from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.helpers import wait_until
from tests.monitoring.test_monitoring_data import (REFERENCE_PATH, capture_dir, churn_project, churn_records,  # noqa: F401
                                                   make_capturing_service, service, spool_row)

pytestmark = pytest.mark.django_db

DRIFT = "/api/v1/services/churnpred/drift/"


def shifted_capture(service, n: int = 300) -> None:
    from monitoring import worker

    now = dt.datetime.now(dt.timezone.utc).timestamp()
    records = churn_records(n, seed=21, shift_age=30)
    worker.store(service, [spool_row(f"j{i}", records[i * 30:(i + 1) * 30], "0", at=now - 300 + i) for i in range(n // 30)])


def reference(api) -> None:
    answer = api.patch(DRIFT, {"reference": "file", "project": "churn", "path": REFERENCE_PATH}, format="json")
    assert answer.status_code == 200, answer.content


def test_check_now_answers_at_once_with_a_job_that_the_worker_computes(service, owner_api, churn_project,
                                                                       django_capture_on_commit_callbacks, monkeypatch):
    from monitoring import drift_jobs
    from monitoring.models import DriftJob, DriftReport
    from monitoring.tasks import compute_drift_job

    shifted_capture(service)
    reference(owner_api)
    with django_capture_on_commit_callbacks() as enqueued:
        answer = owner_api.post(DRIFT, {}, format="json")
    # The request only wrote the job: nothing was read or compared, no report exists yet.
    assert answer.status_code == 202, answer.content
    job = answer.json()
    assert job["status"] == "queued" and job["done"] is False and job["progress"] == 0 and job["report"] is None
    assert answer["Location"] == job["url"] == f"/api/v1/services/{service.pk}/drift/jobs/{job['id']}/"
    assert not DriftReport.objects.exists() and len(enqueued) == 1
    assert owner_api.get(DRIFT).json()["job"]["status"] == "queued"

    # The worker: every step it reaches is written on the job as it goes.
    monkeypatch.setattr(drift_jobs, "PROGRESS_EVERY", 0.0)
    with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=True):
        assert compute_drift_job(job["id"]) == "succeeded"
    steps = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('UPDATE "monitoring_driftjob"')]
    assert any("Reading the captured rows" in q for q in steps) and any("Reading the reference" in q for q in steps)
    assert any("Comparing age (" in q for q in steps), steps
    done = owner_api.get(job["url"]).json()
    assert done["status"] == "succeeded" and done["done"] and done["progress"] == 1.0 and done["error"] is None
    assert done["report"]["drifted_features"] == ["age"] and done["report"]["id"] == DriftReport.objects.get().pk
    body = owner_api.get(DRIFT).json()
    assert body["job"]["status"] == "succeeded" and body["latest"]["id"] == done["report"]["id"]
    # A duplicate message of the same job does nothing.
    assert compute_drift_job(job["id"]) is None and DriftReport.objects.count() == 1
    assert DriftJob.objects.get().started_at is not None


def test_a_second_check_while_one_is_open_is_that_one(service, owner_api, churn_project, django_capture_on_commit_callbacks):
    from monitoring.models import DriftJob
    from monitoring.tasks import compute_drift_job

    shifted_capture(service)
    reference(owner_api)
    with django_capture_on_commit_callbacks() as enqueued:
        first = owner_api.post(DRIFT, {}, format="json").json()
        second = owner_api.post(DRIFT, {}, format="json").json()
    assert first["id"] == second["id"] and DriftJob.objects.count() == 1 and len(enqueued) == 1
    compute_drift_job(first["id"])
    with django_capture_on_commit_callbacks():
        third = owner_api.post(DRIFT, {}, format="json").json()
    assert third["id"] != first["id"] and third["status"] == "queued"


def test_a_job_whose_worker_went_silent_is_given_up_and_a_new_one_starts(service, owner_api, churn_project,
                                                                         django_capture_on_commit_callbacks):
    from django.utils import timezone

    from monitoring.models import DriftJob

    reference(owner_api)
    lost = DriftJob.objects.create(service=service, status=DriftJob.Status.RUNNING)
    DriftJob.objects.filter(pk=lost.pk).update(heartbeat_at=timezone.now() - dt.timedelta(seconds=DriftJob.STALE_SECONDS + 1))
    with django_capture_on_commit_callbacks():
        fresh = owner_api.post(DRIFT, {}, format="json").json()
    lost.refresh_from_db()
    assert lost.status == "failed" and "No worker worked on this check" in lost.error and lost.finished_at
    assert fresh["id"] != lost.pk and fresh["status"] == "queued"


def test_a_check_with_nothing_to_compare_fails_with_what_to_change(service, owner_api, churn_project,
                                                                   django_capture_on_commit_callbacks):
    from monitoring.models import DriftReport
    from monitoring.tasks import compute_drift_job

    reference(owner_api)  # no rows captured at all
    with django_capture_on_commit_callbacks():
        job = owner_api.post(DRIFT, {}, format="json").json()
    assert compute_drift_job(job["id"]) == "failed"
    failed = owner_api.get(job["url"]).json()
    assert failed["status"] == "failed" and failed["done"] and failed["report"] is None
    assert "No captured inputs" in failed["error"] and "turn capture on" in failed["error"]
    assert not DriftReport.objects.exists()
    # Refused before any job when the range is reversed or no reference is set.
    answer = owner_api.post(DRIFT, {"since": "2026-12-02", "until": "2026-12-01"}, format="json")
    assert answer.status_code == 400 and "until" in answer.json()["error"]["fields"]
    assert owner_api.get(f"{DRIFT}jobs/999999/").status_code == 404


def test_the_stale_limit_is_past_the_maintenance_queues_hard_time_limit():
    from mlportal.celery import queue_time_limits
    from monitoring.models import DriftJob

    assert DriftJob.STALE_SECONDS > queue_time_limits("celery")[1]


@pytest.mark.integration
def test_the_real_worker_computes_a_check_asked_for_over_the_api(celery_worker, owner, workspace, owner_api):
    """Through the broker to the real maintenance worker; the capture storage is the data folder's,
    which the worker shares."""
    from runs.services import project_create

    service = make_capturing_service(workspace, owner)
    project_create(workspace=workspace, name="churn", user=owner, template="churn")
    shifted_capture(service)
    reference(owner_api)
    answer = owner_api.post(DRIFT, {}, format="json")
    assert answer.status_code == 202, answer.content
    url = answer.json()["url"]
    wait_until(lambda: owner_api.get(url).json()["done"], timeout=120, interval=0.3, message="the worker's drift check")
    job = owner_api.get(url).json()
    assert job["status"] == "succeeded", job
    assert job["report"]["drifted_features"] == ["age"] and job["report"]["current_rows"] == 300
