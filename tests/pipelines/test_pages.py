"""The pipeline pages: list + create form, the pipeline page with "Retrain now", the pipeline
run page with its steps; outsiders get 404."""
from __future__ import annotations

import pytest

from pipelines import services
from pipelines.models import Pipeline, PipelineRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def pipeline(owner, workspace, project, recorded_service):
    return services.pipeline_create(workspace=workspace, user=owner, name="churn-retrain", project=project,
                                    script="train.py", service=recorded_service(), gate="acc >= 0.8")


def test_the_create_form_shows_the_gate_error_next_to_the_field_and_creates_nothing(page_client, owner, project,
                                                                                   recorded_service):
    recorded_service()
    client = page_client(owner)
    answer = client.post("/pipelines/", {"name": "p", "project": "churn_prediction", "script": "train.py",
                                         "output_path": "outputs/model.pkl", "service": "churnpred", "gate": "acc >= best",
                                         "mode": "deploy", "rollout": "rolling", "when_busy": "queue"})
    assert answer.status_code == 200 and "neither a number nor" in answer.content.decode()
    assert not Pipeline.objects.exists()
    created = client.post("/pipelines/", {"name": "p", "project": "churn_prediction", "script": "train.py",
                                          "output_path": "outputs/model.pkl", "service": "churnpred", "gate": "acc >= 0.8",
                                          "mode": "deploy", "rollout": "rolling", "when_busy": "queue"})
    assert created.status_code == 302 and Pipeline.objects.get().gate == "acc >= 0.8"


def test_retrain_now_queues_a_run_and_its_page_shows_the_steps(page_client, owner, pipeline):
    client = page_client(owner)
    page = client.get(f"/pipelines/{pipeline.pk}/").content.decode()
    assert "Retrain now" in page and "acc &gt;= 0.8" in page
    answer = client.post(f"/pipelines/{pipeline.pk}/run/")
    run = PipelineRun.objects.get()
    assert answer.status_code == 302 and answer["Location"] == f"/pipeline-runs/{run.pk}/"
    detail = client.get(answer["Location"]).content.decode()
    assert 'data-module="pipeline-run"' in detail and 'data-step="deploy"' in detail and "Update the service" in detail
    assert "churn-retrain" in client.get("/pipelines/").content.decode()


def test_outsiders_get_404_on_every_pipeline_page(page_client, outsider, pipeline):
    run = services.pipeline_trigger(pipeline=pipeline, user=pipeline.created_by)
    client = page_client(outsider)
    for path in (f"/pipelines/{pipeline.pk}/", f"/pipeline-runs/{run.pk}/"):
        assert client.get(path).status_code == 404
    assert client.post(f"/pipelines/{pipeline.pk}/run/").status_code == 404
    assert client.post(f"/pipelines/{pipeline.pk}/delete/").status_code == 404
    assert f"/pipelines/{pipeline.pk}/" not in client.get("/pipelines/").content.decode()
    assert PipelineRun.objects.count() == 1 and Pipeline.objects.count() == 1


def test_the_webhook_pages_show_the_secret_once_and_send_a_test(page_client, owner, workspace, outsider):
    from pipelines.models import Webhook, WebhookDelivery

    client = page_client(owner)
    refused = client.post("/webhooks/", {"name": "ci", "url": "ftp://x.example.com/"})
    assert refused.status_code == 200 and "is not an http(s) URL" in refused.content.decode() and not Webhook.objects.exists()
    created = client.post("/webhooks/", {"name": "ci", "url": "https://hooks.example.com/x", "events": ["pipeline.finished"]})
    webhook = Webhook.objects.get()
    assert created.status_code == 200 and webhook.secret in created.content.decode()
    detail = client.get(f"/webhooks/{webhook.pk}/").content.decode()
    assert webhook.secret not in detail and "Send test" in detail
    assert client.post(f"/webhooks/{webhook.pk}/test/").status_code == 302
    assert WebhookDelivery.objects.get().event == "ping"
    stranger = page_client(outsider)
    assert stranger.get(f"/webhooks/{webhook.pk}/").status_code == 404
    assert stranger.post(f"/webhooks/{webhook.pk}/test/").status_code == 404


def test_the_pipeline_page_edits_the_schedule_and_makes_a_webhook_secret(page_client, owner, pipeline):
    from django_celery_beat.models import PeriodicTask

    client = page_client(owner)
    fields = {"gate": "acc >= 0.8", "mode": "deploy", "rollout": "rolling", "when_busy": "queue", "enabled": "on"}
    refused = client.post(f"/pipelines/{pipeline.pk}/", {**fields, "schedule": "0 3 * * funday"})
    from django.utils.html import escape

    assert refused.status_code == 200 and escape("its day of week field 'funday' is not valid") in refused.content.decode()
    assert not PeriodicTask.objects.filter(task="pipelines.tasks.scheduled_trigger").exists()
    saved = client.post(f"/pipelines/{pipeline.pk}/", {**fields, "schedule": "every 6 hours", "trigger_on_data": "on"})
    assert saved.status_code == 302
    pipeline.refresh_from_db()
    assert (pipeline.schedule, pipeline.trigger_on_data, pipeline.periodic_task.interval.every) == ("every 6 hours", True, 21600)
    made = client.post(f"/pipelines/{pipeline.pk}/", {"webhook": "new"}).content.decode()
    pipeline.refresh_from_db()
    assert pipeline.webhook_secret and pipeline.webhook_secret in made
    assert pipeline.webhook_secret not in client.get(f"/pipelines/{pipeline.pk}/").content.decode()
