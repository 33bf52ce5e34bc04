"""Retraining pipelines: a project's script re-run on a trigger, a gate, and the service moved to
the new model version at the same URL and keys.

A ``Pipeline`` belongs to a workspace, names a project (script, compute target, output path) and a
target service. Each execution is a ``PipelineRun`` with its ``PipelineStep`` rows (run → gate →
register → manifest → image → deploy), each with status, times, log and links: the lineage of one
retraining in one place. At most one pipeline run of a pipeline is ``running`` at a time (a
partial unique constraint, besides the row lock the trigger takes).
"""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from workspaces.crypto import EncryptedCharField


class Pipeline(models.Model):
    """What a retraining does, and when it does it."""

    class Mode(models.TextChoices):
        DEPLOY = "deploy", "Register and deploy"
        REGISTER_ONLY = "register_only", "Register only, don't deploy"

    class WhenBusy(models.TextChoices):
        QUEUE = "queue", "Queue the new trigger"
        SKIP = "skip", "Skip the new trigger"

    class Rollout(models.TextChoices):
        ROLLING = "rolling", "Rolling update"
        CANARY = "canary", "Canary with automatic rollback"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="pipelines")
    name = models.CharField(max_length=63)
    description = models.TextField(blank=True)
    project = models.ForeignKey("runs.Project", on_delete=models.CASCADE, related_name="pipelines")
    script = models.CharField(max_length=255)
    args = models.JSONField(default=list, blank=True)
    target = models.CharField(max_length=16, default="docker")
    # The run's output that becomes the next model version, relative to the run (outputs/model.pkl).
    output_path = models.CharField(max_length=255, default="outputs/model.pkl")
    # The model whose next version it registers; empty: the one the service serves.
    model_name = models.CharField(max_length=100, blank=True)
    service = models.ForeignKey("deployments.Service", on_delete=models.CASCADE, related_name="pipelines")
    # The gate as written ("DTree Accuracy >= served - 0.01"); empty: no gate. Parsed by checks.parse_gate.
    gate = models.CharField(max_length=300, blank=True)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.DEPLOY)
    when_busy = models.CharField(max_length=8, choices=WhenBusy.choices, default=WhenBusy.QUEUE)
    rollout = models.CharField(max_length=8, choices=Rollout.choices, default=Rollout.ROLLING)
    canary_weight = models.PositiveSmallIntegerField(default=10)
    canary_bake_seconds = models.PositiveIntegerField(default=300)
    # A project file whose content replaces the service manifest's requirements.txt (empty: keep it).
    requirements_path = models.CharField(max_length=255, blank=True)
    enabled = models.BooleanField(default=True)
    # Triggers besides "by hand": a schedule (cron line or "every N minutes", run by
    # django-celery-beat's PeriodicTask below), new data (a file under the project's data/ folder
    # uploaded or changed), and an incoming webhook signed with this pipeline's secret.
    schedule = models.CharField(max_length=100, blank=True)
    periodic_task = models.OneToOneField("django_celery_beat.PeriodicTask", null=True, blank=True,
                                         on_delete=models.SET_NULL, related_name="+")
    trigger_on_data = models.BooleanField(default=False)
    # A drift signal of the target service (``services.drift_signal_record``, which the drift
    # detector of model monitoring calls) starts it.
    trigger_on_drift = models.BooleanField(default=False)
    webhook_secret = EncryptedCharField(max_length=255, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="pipeline_unique_name")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("pipeline-detail", args=[self.pk])


class PipelineRun(models.Model):
    """One execution of a pipeline: queued → running → succeeded | failed | canceled; or skipped
    (a trigger that arrived while another run was going and the pipeline skips such triggers)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"
        CANCELED = "canceled", "Canceled"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "By hand"
        SCHEDULE = "schedule", "Schedule"
        DATA = "data", "New data"
        WEBHOOK = "webhook", "Incoming webhook"
        DRIFT = "drift", "Drift"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.SKIPPED, Status.CANCELED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    pipeline = models.ForeignKey(Pipeline, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    reason = models.TextField(blank=True, help_text="Why it failed or was skipped, one or two sentences")
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    trigger_detail = models.CharField(max_length=500, blank=True)
    triggered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    # Lineage: what this retraining made (SET_NULL: the history outlives what retention deletes).
    run = models.ForeignKey("runs.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model = models.ForeignKey("registry.Model", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    manifest = models.ForeignKey("registry.Manifest", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    image = models.ForeignKey("registry.Image", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    revision = models.PositiveIntegerField(null=True, blank=True, help_text="The service revision it made")
    # The model version served when it started (what the gate compared with, what stays on failure).
    served_model = models.ForeignKey("registry.Model", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="When the worker last advanced it")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["pipeline", "number"], name="pipeline_run_unique_number"),
            # Never two retrainings of one pipeline updating its service at once.
            models.UniqueConstraint(fields=["pipeline"], condition=Q(status="running"), name="pipeline_one_running"),
        ]
        indexes = [
            # A pipeline's page lists its runs, newest first; the trigger looks for active ones.
            models.Index(fields=["pipeline", "status", "-created_at"], name="pipeline_run_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.pipeline.name} #{self.number}"

    def get_absolute_url(self) -> str:
        return reverse("pipeline-run-detail", args=[self.pk])

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        from django.utils import timezone

        return round(((self.ended_at or timezone.now()) - self.started_at).total_seconds(), 3)


class PipelineStep(models.Model):
    """One step of a pipeline run, in order: run, gate, register, manifest, image, deploy."""

    class Name(models.TextChoices):
        RUN = "run", "Run the script"
        GATE = "gate", "Gate"
        REGISTER = "register", "Register the model"
        MANIFEST = "manifest", "Manifest"
        IMAGE = "image", "Image"
        DEPLOY = "deploy", "Update the service"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"

    ORDER = [Name.RUN, Name.GATE, Name.REGISTER, Name.MANIFEST, Name.IMAGE, Name.DEPLOY]

    pipeline_run = models.ForeignKey(PipelineRun, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=16, choices=Name.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    log = models.TextField(blank=True)
    # What the step made or used: {"run": {"id", "label"}, "model": …, "image": …, "revision": …}.
    links = models.JSONField(default=dict, blank=True)
    # Where a waiting step stands between two looks (e.g. the service update it asked for).
    state = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["pipeline_run", "position"]
        constraints = [models.UniqueConstraint(fields=["pipeline_run", "name"], name="pipeline_step_unique")]

    def __str__(self) -> str:
        return f"{self.pipeline_run_id} {self.name}: {self.status}"

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        from django.utils import timezone

        return round(((self.ended_at or timezone.now()) - self.started_at).total_seconds(), 3)


class Webhook(models.Model):
    """An outgoing webhook of a workspace: HMAC-signed POSTs to ``url`` on the events it names."""

    class Event(models.TextChoices):
        RUN_FINISHED = "run.finished", "Run finished"
        MODEL_REGISTERED = "model.registered", "Model registered"
        IMAGE_BUILT = "image.built", "Image built"
        SERVICE_UPDATED = "service.updated", "Service updated"
        PIPELINE_FINISHED = "pipeline.finished", "Pipeline finished"
        DRIFT_DETECTED = "drift.detected", "Drift detected"
        PING = "ping", "Test (send test)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="webhooks")
    name = models.CharField(max_length=63)
    url = models.URLField(max_length=500)
    # The events it receives; empty: all of them.
    events = models.JSONField(default=list, blank=True)
    secret = EncryptedCharField(max_length=255)
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="webhook_unique_name")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("webhook-detail", args=[self.pk])

    def wants(self, event: str) -> bool:
        return event == self.Event.PING or not self.events or event in self.events


class WebhookDelivery(models.Model):
    """One event sent (or being sent) to one webhook, with each attempt's outcome."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RETRYING = "retrying", "Retrying"
        # Claimed by a worker for one attempt, until next_attempt_at (a lease: a worker lost mid-POST
        # leaves it to be tried again once that passes).
        SENDING = "sending", "Sending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32)
    # What it is about (a run, a model version …): one delivery per webhook, event and object.
    object_id = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    # Every attempt: [{"at", "response_code", "latency_ms", "error"}].
    log = models.JSONField(default=list, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["webhook", "event", "object_id"], name="webhook_delivery_once")]
        # The webhook page lists its deliveries, newest first; the sweep finds retries that are due.
        indexes = [models.Index(fields=["webhook", "-created_at"], name="webhook_delivery_recent"),
                   models.Index(fields=["status", "next_attempt_at"], name="webhook_delivery_due")]

    def __str__(self) -> str:
        return f"{self.event} → {self.webhook_id}: {self.status}"


class WebhookCursor(models.Model):
    """How far the event scan has read (one row): events are read from the rows runs, models,
    images, services and pipelines already write, so none of those apps has to know about webhooks."""

    name = models.CharField(max_length=32, unique=True)
    scanned_until = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}: {self.scanned_until}"


class DriftSignal(models.Model):
    """Drift of a service's inputs or predictions, as the monitoring side saw it: it starts the
    pipelines of that service that retrain on drift and is sent as the ``drift.detected`` event."""

    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    service = models.ForeignKey("deployments.Service", on_delete=models.CASCADE, related_name="drift_signals")
    detail = models.JSONField(default=dict, blank=True, help_text="What drifted and by how much, as the detector says")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        # The webhook scan reads the newest signals.
        indexes = [models.Index(fields=["created_at"], name="drift_signal_recent")]

    def __str__(self) -> str:
        return f"drift of {self.service_id} at {self.created_at}"
