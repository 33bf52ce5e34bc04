"""Nothing is lost when the broker restarts: queued runs and image builds whose messages Redis
dropped are sent again by the maintenance worker's sweep and complete; the runs that were running
complete too."""
from __future__ import annotations

import pytest

from registry.models import Image
from runs import services
from runs.models import Run
from tests.registry.test_image_lifecycle import small_manifest

pytestmark = [pytest.mark.docker, pytest.mark.integration]

SLOW = b"import time\nprint('working', flush=True)\ntime.sleep(12)\nprint('done')\n"
QUICK = b"print('quick done')\n"


@pytest.fixture
def project(owner, workspace):
    project = services.project_create(workspace=workspace, name="durable", user=owner)
    services.project_file_put(project=project, path="slow.py", content=SLOW, user=owner)
    services.project_file_put(project=project, path="quick.py", content=QUICK, user=owner)
    return project


def submit(api, project, script) -> str:
    res = api.post("/api/v1/runs/", {"project": str(project.id), "script": script, "target": "docker"}, format="json")
    assert res.status_code == 201, res.json()
    return res.json()["id"]


def test_queued_runs_and_builds_complete_after_a_redis_restart(workers, broker, owner_api, project):
    workers.start("runs", "runs", 1)
    running = submit(owner_api, project, "slow.py")
    workers.wait(lambda: Run.objects.get(id=running).status == Run.Status.RUNNING, timeout=180, what="the slow run to start")
    queued = [submit(owner_api, project, "quick.py") for _ in range(3)]
    manifest = small_manifest(owner_api)
    res = owner_api.post("/api/v1/images/", {"manifest": manifest["id"]}, format="json")
    assert res.status_code == 201, res.json()
    image_id = res.json()["id"]
    # The messages really are in the broker (no builds worker yet, the one run slot is busy).
    workers.wait(lambda: broker.length("runs") == 3 and broker.length("builds") == 1, timeout=10, what="messages queued")

    broker.kill()
    broker.start()  # empty: no persistence, as a restarted Redis without AOF/RDB
    assert broker.length("runs") == 0 and broker.length("builds") == 0

    workers.start("maintenance", "builds,deploy,celery", 2, beat=True)
    for run_id in [running, *queued]:
        workers.wait(lambda: Run.objects.get(id=run_id).status in Run.FINISHED, timeout=240, what=f"run {run_id} to end")
        run = Run.objects.get(id=run_id)
        assert run.status == Run.Status.COMPLETED, (run.status, run.reason)
    workers.wait(lambda: Image.objects.get(pk=image_id).status in (Image.Status.SUCCEEDED, Image.Status.FAILED),
                 timeout=600, what="the image build")
    image = Image.objects.get(pk=image_id)
    assert image.status == Image.Status.SUCCEEDED, image.error
    assert "re-sent the task of 3 queued run(s)" in workers.log("maintenance")
    assert "re-sent the build task of 1 image(s)" in workers.log("maintenance")


def test_work_waiting_for_a_slot_is_re_sent_with_a_growing_gap():
    from datetime import datetime, timedelta, timezone

    from workspaces.broker import MAX_GAP_SECONDS, resend_due

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    assert not resend_due(created_at=t0, sent_at=None, now=at(59), after_s=60)
    assert resend_due(created_at=t0, sent_at=None, now=at(60), after_s=60)
    # Re-sent at 60 s: next after another 60 s; re-sent at 120 s: after 120 s more; and so on.
    assert not resend_due(created_at=t0, sent_at=at(60), now=at(119), after_s=60)
    assert resend_due(created_at=t0, sent_at=at(60), now=at(120), after_s=60)
    assert not resend_due(created_at=t0, sent_at=at(120), now=at(239), after_s=60)
    assert resend_due(created_at=t0, sent_at=at(120), now=at(240), after_s=60)
    day = 86400
    assert resend_due(created_at=t0, sent_at=at(day), now=at(day + MAX_GAP_SECONDS), after_s=60)


def test_the_sweep_sends_only_what_is_due_unless_the_broker_forgot(broker, owner, project, settings):
    from datetime import timedelta

    from django.utils import timezone

    from runs.reconcile import requeue_lost_runs

    settings.MLPORTAL_REQUEUE_AFTER_SECONDS = 60
    old = services.run_submit(project=project, script="quick.py", args=[], target="docker", user=owner)
    fresh = services.run_submit(project=project, script="quick.py", args=[], target="docker", user=owner)
    Run.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(seconds=61))
    # First sweep ever: the broker holds no sentinel yet, so everything queued is sent again.
    assert set(requeue_lost_runs()["resent"]) == {str(old.id), str(fresh.id)}
    broker.client().delete("runs")
    assert requeue_lost_runs() == {"resent": [], "broker_forgot": False}  # both were just sent
    Run.objects.filter(id=old.id).update(heartbeat_at=timezone.now() - timedelta(seconds=62))
    assert requeue_lost_runs()["resent"] == [str(old.id)]
    assert broker.length("runs") == 1
    broker.client().flushdb()  # the broker forgets: everything queued goes again
    assert set(requeue_lost_runs()["resent"]) == {str(old.id), str(fresh.id)}
