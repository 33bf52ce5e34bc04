"""How long a workspace keeps what grows: runs' logs and outputs, and images no service uses.

Each kind is kept N days, or the last N (per project for runs, per image name for images); with
both set, what either rule keeps stays; with neither, it is kept for good. Captured scoring data
(issue 16) is kept ``capture_keep_days`` days: older day partitions are deleted.
"""
from __future__ import annotations

from django.db import models


class RetentionPolicy(models.Model):
    workspace = models.OneToOneField("workspaces.Workspace", on_delete=models.CASCADE, primary_key=True,
                                     related_name="retention")
    run_files_keep_days = models.PositiveIntegerField(null=True, blank=True,
                                                      help_text="Finished runs keep their log and outputs this many days")
    run_files_keep_last = models.PositiveIntegerField(null=True, blank=True,
                                                      help_text="The last N finished runs of each project keep them")
    unused_images_keep_days = models.PositiveIntegerField(null=True, blank=True,
                                                          help_text="Images no service uses are kept this many days")
    unused_images_keep_last = models.PositiveIntegerField(null=True, blank=True,
                                                          help_text="The last N images of each name are kept")
    capture_keep_days = models.PositiveIntegerField(null=True, blank=True,
                                                    help_text="Captured scoring data (Parquet partitions by day) is kept this many days")
    last_applied_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    FIELDS = ("run_files_keep_days", "run_files_keep_last", "unused_images_keep_days", "unused_images_keep_last",
              "capture_keep_days")

    def __str__(self) -> str:
        return f"retention of {self.workspace_id}"


class EnvironmentImage(models.Model):
    """An environment image (``mlportal-env:<hash>``, compute.envimage) this portal built or reused:
    portal-wide, shared by every workspace's runs and service images. ``last_used_at`` moves each
    time a run or an image build prepares it (retention.envimages.env_image_prepare); the daily
    retention removes the ones nothing uses past MLPORTAL_ENV_IMAGE_KEEP_DAYS, keeping the
    MLPORTAL_ENV_IMAGE_KEEP_LAST most recently used. One another portal on the same engine built
    (``built_by``) is only forgotten there: its builder's retention removes it."""

    tag = models.CharField(max_length=255, unique=True)
    engine_id = models.CharField(max_length=80, blank=True, help_text="The engine's id (sha256:…) when last seen")
    size = models.BigIntegerField(null=True, blank=True)
    built_by = models.CharField(max_length=64, blank=True,
                                help_text="The mlportal.portal label of the portal that built it ('' when unknown)")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField()

    class Meta:
        ordering = ["-last_used_at"]
        # Retention reads them newest use first (the last N kept).
        indexes = [models.Index(fields=["-last_used_at"], name="envimage_last_used")]

    def __str__(self) -> str:
        return self.tag
