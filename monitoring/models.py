"""Model data collection (issue 16): a service's capture switch, and what the worker stored.

Rows themselves live in Parquet files in the ``capture`` storage (``MLPORTAL_DATA_DIR/capture/``, or the
``capture/`` prefix of the S3 bucket), under ``<service id>/
model_version=<v>/day=<YYYY-MM-DD>/``; the database holds the switch, one row per stored file
(``CaptureFile``) and one per stored request id (``CapturedRow``, the de-duplication index).
"""
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
    request_id = models.CharField(max_length=128)
    file = models.ForeignKey(CaptureFile, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["service", "request_id"], name="captured_row_unique_request")]
