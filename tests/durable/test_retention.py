"""Retention frees storage for real: runs' logs and outputs past a workspace's policy are deleted
(files and rows), images no service uses are removed from the engine (its image list shrinks),
the portal's dangling layers are pruned and nobody else's; the Storage page, API and CLI show what
each project, model and image uses and what retention frees next."""
from __future__ import annotations

import io
import uuid
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from compute.engine import connect
from registry.models import Image
from retention import services as retention
from retention import worker as retention_worker
from retention.models import RetentionPolicy
from runs import services
from runs.models import Run, RunLogChunk, RunOutput
from tests.cli.conftest import cli, login, portal  # noqa: F401
from tests.runs.conftest import finished_run  # noqa: F401


def _old(run, days: int):
    Run.objects.filter(id=run.id).update(ended_at=timezone.now() - timedelta(days=days))


@pytest.fixture
def project(owner, workspace):
    project = services.project_create(workspace=workspace, name="kept", user=owner)
    services.project_file_put(project=project, path="train.py", content=b"print('hello')\n", user=owner)
    return project


def test_runs_logs_and_outputs_past_the_policy_are_deleted_files_and_rows(owner, workspace, project, finished_run):  # noqa: F811
    old = finished_run(project, owner, outputs={"model.pkl": b"m" * 5000}, log=("old line",))
    older = finished_run(project, owner, outputs={"a.txt": b"a" * 100})
    recent = finished_run(project, owner, outputs={"b.txt": b"b" * 10})
    _old(old, 40)
    _old(older, 50)
    names = list(RunOutput.objects.filter(run__in=[old, older]).values_list("storage_name", flat=True))
    assert all(default_storage.exists(n) for n in names)
    retention.retention_policy_update(workspace=workspace, user=owner, run_files_keep_days=30)

    from retention.selectors import retention_plan

    plan = retention_plan(workspace)
    assert {r["id"] for r in plan.runs} == {str(old.id), str(older.id)}
    assert plan.bytes >= 5100
    summary = retention_worker.retention_apply(workspace_id=workspace.pk)
    assert summary["runs"] == 2 and summary["bytes"] >= 5100
    assert not RunOutput.objects.filter(run__in=[old, older]).exists()
    assert not any(default_storage.exists(n) for n in names)
    assert RunOutput.objects.filter(run=recent).count() == 1
    texts = "".join(RunLogChunk.objects.filter(run=old).values_list("text", flat=True))
    assert "old line" not in texts and "removed by the workspace's retention" in texts
    assert Run.objects.get(id=old.id).status == Run.Status.COMPLETED  # the run itself stays
    assert retention_plan(workspace).runs == []

    # keep_last: the last N finished runs of the project keep their files whatever their age.
    newer = [finished_run(project, owner, outputs={"c.txt": b"c"}) for _ in range(2)]
    retention.retention_policy_update(workspace=workspace, user=owner, run_files_keep_days=None, run_files_keep_last=2)
    assert [r["id"] for r in retention_plan(workspace).runs] == [str(recent.id)]  # the two newer ones are kept
    retention_worker.retention_apply(workspace_id=workspace.pk)
    assert RunOutput.objects.filter(run__in=newer).count() == 2 and not RunOutput.objects.filter(run=recent).exists()


def _build(client, tag: str, *, portal: str | None = None, content: str) -> str:
    from workspaces.instance import portal_instance

    label = f'LABEL mlportal.kind="image" mlportal.portal="{portal or portal_instance()}"\n'
    dockerfile = f"FROM python:3.11-slim\n{label}RUN echo '{content}' > /marker\n".encode()
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
    return image.id


@pytest.mark.docker
def test_unused_images_leave_the_engine_and_dangling_layers_of_the_portal_are_pruned(owner, workspace, owner_api):
    suffix = uuid.uuid4().hex[:8]
    tag, rebuilt, foreign_tag = f"mlportal-test-ret:{suffix}", f"mlportal-test-ret-rebuilt:{suffix}", f"other-team-ret:{suffix}"
    with connect() as client:
        unused_id = _build(client, tag, content=suffix)
        dangling_id = _build(client, rebuilt, content="first " + suffix)
        _build(client, rebuilt, content="second " + suffix)  # the first one is now dangling
        # Another portal's (or anyone's) dangling image: never pruned by this one.
        foreign_dangling = _build(client, foreign_tag, portal="another-portal", content="first " + suffix)
        _build(client, foreign_tag, portal="another-portal", content="second " + suffix)
        ids_before = {i.id for i in client.images.list(all=True)}
    assert {unused_id, dangling_id, foreign_dangling} <= ids_before
    from registry.models import Manifest

    manifest = Manifest.objects.create(workspace=workspace, name="ret", version=1, content_hash="0" * 64, created_by=owner)
    image = Image.objects.create(workspace=workspace, manifest=manifest, name="ret", version=1, tag=tag,
                                 image_id=unused_id, size=1234, status=Image.Status.SUCCEEDED, created_by=owner)
    Image.objects.filter(pk=image.pk).update(created_at=timezone.now() - timedelta(days=10))
    try:
        body = owner_api.get("/api/v1/storage/").json()
        assert [i["ref"] for i in body["images"]] == ["ret:1"] and body["images"][0]["services"] == []
        assert body["next"]["image_count"] == 0  # no policy yet: kept for good
        res = owner_api.patch("/api/v1/storage/retention/", {"unused_images_keep_days": 7}, format="json")
        assert res.status_code == 200 and res.json()["unused_images_keep_days"] == 7
        assert owner_api.get("/api/v1/storage/").json()["next"]["images"][0]["tag"] == tag

        summary = retention_worker.retention_apply(workspace_id=workspace.pk)
        assert summary["images"] == 1 and summary["layers"] >= 1, summary
        with connect() as client:
            ids_after = {i.id for i in client.images.list(all=True)}
        assert unused_id not in ids_after and dangling_id not in ids_after  # the engine's list shrank
        assert foreign_dangling in ids_after  # not the portal's: left alone
        assert not Image.objects.filter(pk=image.pk).exists()
    finally:
        with connect() as client:
            for ref in (tag, rebuilt, foreign_tag, foreign_dangling, dangling_id):
                try:
                    client.images.remove(ref, force=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass


def test_the_storage_api_is_scoped_and_only_owners_change_retention(owner_api, reader_api, outsider_api, workspace):
    assert reader_api.get("/api/v1/storage/?workspace=team").status_code == 200
    res = reader_api.patch("/api/v1/storage/retention/?workspace=team", {"run_files_keep_days": 3}, format="json")
    assert res.status_code == 403 and res.json()["error"]["code"] == "role_required"
    assert outsider_api.get("/api/v1/storage/?workspace=team").status_code == 404
    res = owner_api.patch("/api/v1/storage/retention/", {"run_files_keep_days": 0}, format="json")
    assert res.status_code == 400
    assert res.json()["error"]["fields"]["run_files_keep_days"][0].startswith("run_files_keep_days must be between 1")
    res = owner_api.patch("/api/v1/storage/retention/", {"keep_everything": 1}, format="json")
    assert res.status_code == 400 and "keep_everything" in res.json()["error"]["fields"]
    assert not RetentionPolicy.objects.exists()  # nothing half-saved


def test_the_storage_page_shows_usage_and_saves_retention(page_client, owner, reader, workspace, project, finished_run):  # noqa: F811
    finished_run(project, owner, outputs={"model.pkl": b"m" * 2048})
    page = page_client(owner).get("/storage/")
    html = page.content.decode()
    assert page.status_code == 200 and "kept" in html and 'data-testid="retention-form"' in html and "<meter" in html
    res = page_client(owner).post("/storage/", {"run_files_keep_days": "14", "run_files_keep_last": "",
                                                "unused_images_keep_days": "", "unused_images_keep_last": "2"})
    assert res.status_code == 302
    policy = RetentionPolicy.objects.get(workspace=workspace)
    assert (policy.run_files_keep_days, policy.run_files_keep_last, policy.unused_images_keep_last) == (14, None, 2)
    bad = page_client(owner).post("/storage/", {"run_files_keep_days": "lots"})
    assert bad.status_code == 200 and "must be a whole number" in bad.content.decode()
    reader_page = page_client(reader).get("/storage/").content.decode()
    assert 'data-testid="retention-form"' not in reader_page and "14" in reader_page


def test_the_cli_shows_storage_and_sets_retention(cli, login, owner, workspace, project, finished_run):  # noqa: F811
    finished_run(project, owner, outputs={"model.pkl": b"m" * 4096})
    login(owner)
    shown = cli("storage")
    assert shown.code == 0, shown.err
    assert "project" in shown.out and "kept" in shown.out and "retention frees next: 0 runs" in shown.err
    changed = cli("storage", "retention", "--runs-keep-days", "5", "-o", "json")
    assert changed.code == 0 and '"run_files_keep_days": 5' in changed.out
    bad = cli("storage", "retention", "--runs-keep-days", "soon")
    assert bad.code == 1 and "takes a whole number" in bad.err


def test_apply_now_is_for_owners_and_answers_at_once_with_what_it_frees(owner_api, reader_api, workspace):
    res = owner_api.post("/api/v1/storage/apply/")
    assert res.status_code == 202 and res.json()["queued"] is True and res.json()["next"]["bytes"] == 0
    res = reader_api.post("/api/v1/storage/apply/?workspace=team")
    assert res.status_code == 403 and res.json()["error"]["code"] == "role_required"


def test_the_daily_sweep_runs_on_the_maintenance_worker(settings):
    from celery.schedules import crontab

    from mlportal.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["apply-retention"]
    assert entry["task"] == "retention.tasks.apply_retention" and isinstance(entry["schedule"], crontab)
    app.loader.import_default_modules()
    assert app.amqp.router.route({}, entry["task"])["queue"].name == "celery"
