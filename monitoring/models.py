"""Model data collection (issue 16): a service's capture switch, and what the worker stored.

Rows themselves live in Parquet files in the ``capture`` storage (``MLPORTAL_DATA_DIR/capture/``, or the
``capture/`` prefix of the S3 bucket), under ``<service id>/
model_version=<v>/day=<YYYY-MM-DD>/``; the database holds the switch, one row per stored file
(``CaptureFile``) and one per stored request id (``CapturedRow``, the de-duplication index).
"""
from django.conf import settings
from django.db import models


class Capture(models.Model):
    """A service's capture switch (no row: off). Sent to the replicas with every pull."""

    class Mode(models.TextChoices):
        OFF = "off", "Off"
        INPUTS = "inputs", "Inputs"
        PREDICTIONS = "predictions", "Predictions"
        BOTH = "both", "Inputs and predictions"

    service = models.OneToOneField("deployments.Service", on_delete=models.CASCADE, related_name="capture", primary_key=True)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.OFF)
    percent = models.FloatField(default=100.0, help_text="Share of requests captured, 0-100")
    dropped = models.PositiveBigIntegerField(default=0, help_text="Rows the replicas' full spools dropped (last counts seen)")
    dropped_by_replica = models.JSONField(default=dict, blank=True)
    last_collected_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.service_id}: {self.mode} {self.percent:g}%"

    def as_settings(self) -> dict:
        return {"mode": self.mode, "percent": self.percent}


class CaptureFile(models.Model):
    """One Parquet file the worker wrote. ``temp`` is where it was written before its rows were
    recorded; the worker renames it to ``path`` after the commit (and on its next round, if it
    died in between)."""

    service = models.ForeignKey("deployments.Service", on_delete=models.CASCADE, related_name="capture_files")
    model_version = models.CharField(max_length=64)
    day = models.DateField()
    path = models.CharField(max_length=500, unique=True, help_text="Relative to the capture folder")
    temp = models.CharField(max_length=500, help_text="Relative to the capture folder")
    rows = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["service", "day"], name="capture_file_day")]


class CapturedRow(models.Model):
    """A request id stored for a service: a row pulled again is never stored twice."""

    service = models.ForeignKey("deployments.Service", on_delete=models.CASCADE, related_name="+")
    # A caller's id is at most 128 characters; a record of a batch adds "#<index>".
    request_id = models.CharField(max_length=140)
    file = models.ForeignKey(CaptureFile, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["service", "request_id"], name="captured_row_unique_request")]

    def __str__(self) -> str:
        return f"{self.service_id}: {self.request_id}"


class DriftSettings(models.Model):
    """What a service's inputs are compared with, and when that is news.

    The reference is a data file of a project of the service's workspace (CSV, e.g. the churn
    template's training sample) or a time window of the service's own capture. A feature drifts
    when its score passes ``feature_threshold`` (numeric: Wasserstein distance over the reference's
    standard deviation; categorical: Jensen-Shannon distance, base 2) and its test says it is no
    noise (``monitoring.drift``); the service drifts when the
    share of drifted features reaches ``share_threshold``, which raises a drift event.
    """

    class Reference(models.TextChoices):
        FILE = "file", "A project data file"
        WINDOW = "window", "A time window of capture"

    service = models.OneToOneField("deployments.Service", on_delete=models.CASCADE, related_name="drift_settings", primary_key=True)
    reference = models.CharField(max_length=8, choices=Reference.choices, default=Reference.FILE)
    project = models.ForeignKey("runs.Project", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    path = models.CharField(max_length=255, blank=True)
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    current_hours = models.PositiveIntegerField(default=24, help_text="The current data: the last N hours of capture")
    feature_threshold = models.FloatField(default=0.2)
    share_threshold = models.FloatField(default=0.3, help_text="Share of drifted features that raises a drift event")
    scheduled = models.BooleanField(default=True, help_text="Computed by the hourly schedule")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"drift of {self.service_id} against {self.reference}"


class DriftReport(models.Model):
    """One drift computation: per feature a score, a test statistic, a verdict and histograms."""

    service = models.ForeignKey("deployments.Service", on_delete=models.CASCADE, related_name="drift_reports")
    computed_at = models.DateTimeField(auto_now_add=True)
    trigger = models.CharField(max_length=16, default="demand", help_text="demand or schedule")
    reference = models.CharField(max_length=300, help_text="What the current data was compared with")
    current_from = models.DateTimeField()
    current_to = models.DateTimeField()
    reference_rows = models.PositiveIntegerField()
    current_rows = models.PositiveIntegerField()
    features = models.JSONField(default=list)
    share_drifted = models.FloatField()
    drifted = models.BooleanField()

    class Meta:
        ordering = ["-computed_at", "-id"]
        # The Data tab and the CLI read a service's latest report.
        indexes = [models.Index(fields=["service", "-computed_at"], name="drift_report_latest")]

    def __str__(self) -> str:
        return f"drift of {self.service_id} at {self.computed_at:%Y-%m-%d %H:%M}: {self.share_drifted:.0%}"


class DriftJob(models.Model):
    """A drift check asked for on demand (``POST drift/``), computed by a task on the maintenance
    worker so the request never waits on pandas and scipy; the page and the CLI poll it.

    ``step`` and ``progress`` (0-1) say where the computation is, ``heartbeat_at`` when the worker
    last said so (a job open without a heartbeat for ``STALE_SECONDS`` lost its worker and is
    closed by the next request). At most one open (queued or running) job per service.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    OPEN = (Status.QUEUED, Status.RUNNING)
    STALE_SECONDS = 300  # over the maintenance queue's hard time limit (180 s), with room

    service = models.ForeignKey("deployments.Service", on_delete=models.CASCADE, related_name="drift_jobs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    step = models.CharField(max_length=200, default="Waiting for the worker")
    progress = models.FloatField(default=0.0)
    since = models.DateTimeField(null=True, blank=True)
    until = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    report = models.ForeignKey(DriftReport, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["service"], condition=models.Q(status__in=["queued", "running"]),
                                               name="drift_job_one_open")]

    def __str__(self) -> str:
        return f"drift job {self.pk} of {self.service_id}: {self.status}"


class GroundTruth(models.Model):
    """The true label of one captured request, sent later by the caller (joined by request id)."""

    service = models.ForeignKey("deployments.Service", on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=140)
    label = models.CharField(max_length=500)
    received_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["service", "request_id"], name="ground_truth_unique_request")]

    def __str__(self) -> str:
        return f"{self.service_id}: {self.request_id} = {self.label[:40]}"
