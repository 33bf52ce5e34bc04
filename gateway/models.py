"""What the gateway saw, per service, revision and minute: the Traffic tab's chart and the
canary's automatic rollback read these rows.

Each web-server process writes its own rows (``writer``) with its running totals for the minute,
so a write never needs to add to another process's figures; readers add the writers up.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models


class TrafficMinute(models.Model):
    service = models.ForeignKey("deployments.Service", on_delete=models.CASCADE, related_name="traffic")
    revision = models.PositiveIntegerField()
    minute = models.DateTimeField(help_text="The minute (UTC) these figures are for")
    writer = models.CharField(max_length=32, help_text="The web-server process that counted them")
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0, help_text="Answers with a 5xx status")
    latency_sum = models.FloatField(default=0.0, help_text="Seconds, added up")
    latency_buckets = models.JSONField(default=list, help_text="Requests per latency bucket (gateway.metrics.LATENCY_BUCKETS, then +Inf)")
    shadow_requests = models.PositiveIntegerField(default=0, help_text="Requests mirrored to this (shadow) revision")
    shadow_agreed = models.PositiveIntegerField(default=0, help_text="Mirrored requests whose answer matched the live one's")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["service", "revision", "minute", "writer"], name="traffic_minute_unique")]
        # The Traffic tab and the rollback check read one service's last hour (or bake period).
        indexes = [models.Index(fields=["service", "minute"], name="traffic_service_minute")]

    def __str__(self) -> str:
        return f"{self.service_id} r{self.revision} {self.minute:%H:%M}: {self.requests}"


class TrafficChange(models.Model):
    """One change of a service's traffic split: a canary or shadow started, its weight changed,
    promoted, aborted or rolled back (with the figures that tripped it)."""

    service = models.ForeignKey("deployments.Service", on_delete=models.CASCADE, related_name="traffic_changes")
    revision = models.PositiveIntegerField()
    mode = models.CharField(max_length=16)
    action = models.CharField(max_length=16)
    weight = models.PositiveSmallIntegerField(default=0)
    detail = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["service", "-created_at"], name="traffic_change_recent")]

    def __str__(self) -> str:
        return f"{self.service_id} {self.action} {self.mode} r{self.revision} {self.weight}%"
