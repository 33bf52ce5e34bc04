"""Environments (where services run) and realtime services (a running Image in an Environment),
with their replicas, revisions (which image served when) and events.

What runs where lives here and in the containers' labels (``mlportal.kind=service``,
``mlportal.id=<service id>``, ``mlportal.replica=<n>``), so a restarted worker loses nothing.
"""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.urls import reverse

from workspaces.crypto import EncryptedCharField


class Environment(models.Model):
    """A place services run: a Docker engine the workers can reach (``local``), or the engine of a
    Docker Swarm manager (``cluster``: services are Swarm services, see compute/swarm.py).

    ``engine_url`` empty means the workers' own engine (``settings.MLPORTAL_DOCKER_URL``);
    ``publish_address`` is the address of the engine's host on which replicas publish their port.
    Staging and production are environments with those names and labels.
    """

    class Kind(models.TextChoices):
        LOCAL = "local", "Local (a Docker engine)"
        CLUSTER = "cluster", "Cluster (Docker Swarm)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="environments")
    name = models.CharField(max_length=63)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.LOCAL)
    engine_url = models.CharField(max_length=255, blank=True, help_text="tcp:// or ssh:// URL; empty: the workers' own engine")
    publish_address = models.GenericIPAddressField(default="127.0.0.1", help_text="Where replicas publish their port")
    labels = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # What the worker side last saw of the engine (the reconciler, deployments.reconcile): pages
    # and API reads show these with their age and never ask the engine themselves.
    engine_ok = models.BooleanField(null=True, help_text="Empty: not checked yet")
    engine_version = models.CharField(max_length=64, blank=True)
    engine_error = models.TextField(blank=True)
    engine_checked_at = models.DateTimeField(null=True, blank=True)
    engine_answered_at = models.DateTimeField(null=True, blank=True, help_text="The last check the engine answered")
    # A cluster environment's swarm as its engine last described it (compute.swarm.swarm_status:
    # state, manager, nodes, managers, error), at ``swarm_checked_at``; empty: not seen yet.
    swarm = models.JSONField(default=dict, blank=True)
    swarm_checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="environment_unique_name")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("environment-detail", args=[self.pk])

    @property
    def docker_url(self) -> str | None:
        """The engine the workers talk to for this environment (None: the local default)."""
        return self.engine_url or settings.MLPORTAL_DOCKER_URL

    @property
    def engine_label(self) -> str:
        return self.engine_url or "this machine's Docker engine"


class ActiveEnvironment(models.Model):
    """The environment a user deploys to by default in a workspace (the lab's ``az ml env set``)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    set_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "workspace"], name="one_active_environment")]

    def __str__(self) -> str:
        return f"{self.user} uses {self.environment} in {self.workspace_id}"


class Service(models.Model):
    """A realtime scoring service: ``replicas`` containers of ``image`` in ``environment``.

    Keys: callers use ``primary_key`` or ``secondary_key`` (both valid at once); containers also
    accept ``proxy_key``, which only the portal's scoring proxy sends, so a key regenerated at the
    portal works there at once while the containers are being restarted with it.
    ``pending`` holds the change an ``updating`` service is going through; ``lock_token`` /
    ``lock_until`` let one worker at a time act on the service's containers.
    """

    class Status(models.TextChoices):
        CREATING = "creating", "Creating"
        HEALTHY = "healthy", "Healthy"
        UNHEALTHY = "unhealthy", "Unhealthy"
        FAILED = "failed", "Failed"
        UPDATING = "updating", "Updating"
        DELETING = "deleting", "Deleting"
        DELETED = "deleted", "Deleted"

    SERVING = (Status.HEALTHY, Status.UNHEALTHY, Status.UPDATING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="services")
    name = models.CharField(max_length=63)
    environment = models.ForeignKey(Environment, on_delete=models.RESTRICT, related_name="services")
    image = models.ForeignKey("registry.Image", on_delete=models.RESTRICT, related_name="services")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CREATING)
    replicas = models.PositiveSmallIntegerField(default=1, help_text="Replicas it runs (changed by a finished scale)")
    cpus = models.FloatField(default=1.0)
    memory_mb = models.PositiveIntegerField(default=1024)
    # Seconds one scoring request may run in a replica before it answers 504 (empty: the portal's
    # MLPORTAL_SCORING_TIMEOUT_SECONDS); set in each container as MLPORTAL_REQUEST_TIMEOUT.
    request_timeout_s = models.FloatField(null=True, blank=True, help_text="Seconds a scoring request may run")
    # Stored encrypted (workspaces/crypto.py): shown again on demand, so not hashed.
    primary_key = EncryptedCharField(max_length=255)
    secondary_key = EncryptedCharField(max_length=255)
    proxy_key = EncryptedCharField(max_length=255)
    error = models.TextField(blank=True, help_text="Why it failed, one line")
    last_update_error = models.TextField(blank=True, help_text="Why the last update, scale or key change failed")
    pending = models.JSONField(default=dict, blank=True, help_text="The change an updating service is going through")
    # The gateway's limits (empty: MLPORTAL_GATEWAY_CONCURRENCY / MLPORTAL_GATEWAY_QUEUE).
    max_concurrency = models.PositiveIntegerField(null=True, blank=True, help_text="Requests it answers at once at the gateway")
    max_queue = models.PositiveIntegerField(null=True, blank=True, help_text="Requests that may wait for a slot; past it 503")
    # A canary or shadow in progress: {"mode", "revision", "weight", "bake_seconds", "bake_until", thresholds…}.
    rollout = models.JSONField(default=dict, blank=True, help_text="The canary or shadow in progress, if any")
    lock_token = models.UUIDField(null=True, blank=True)
    lock_until = models.DateTimeField(null=True, blank=True)
    # Autoscaling (Azure ML's flags; deployments/autoscale.py is the rule). While enabled, the
    # autoscaler owns ``replicas``; ``autoscale_token`` names the one tick chain that may act.
    autoscale_enabled = models.BooleanField(default=False)
    autoscale_min_replicas = models.PositiveSmallIntegerField(default=1)
    autoscale_max_replicas = models.PositiveSmallIntegerField(default=10)
    autoscale_target_utilization = models.PositiveSmallIntegerField(default=70, help_text="Percent of scoring workers busy")
    autoscale_refresh_seconds = models.PositiveIntegerField(default=1, help_text="Window the utilisation is averaged over")
    autoscale_stable_seconds = models.PositiveIntegerField(default=60, help_text="How long load must stay low before scaling down")
    autoscale_token = models.UUIDField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        # A deleted service's row goes once its containers are gone, which frees its name.
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="service_unique_name")]
        # The scoring proxy finds services by name across workspaces, then checks the key.
        indexes = [models.Index(fields=["name"], name="service_name")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("service-detail", args=[self.pk])

    @property
    def keys(self) -> list[str]:
        return [self.primary_key, self.secondary_key]

    @property
    def autoscale(self) -> dict:
        """The autoscale settings as deployments.autoscale.check_settings returns them."""
        return {"enabled": self.autoscale_enabled, "min_replicas": self.autoscale_min_replicas,
                "max_replicas": self.autoscale_max_replicas, "target_utilization": self.autoscale_target_utilization,
                "refresh_seconds": self.autoscale_refresh_seconds, "stable_seconds": self.autoscale_stable_seconds}

    @property
    def swarm_name(self) -> str:
        """The Swarm service's name in a cluster environment."""
        return f"mlportal-{self.name[:40]}-{self.pk.hex[:8]}"


class ServiceReplica(models.Model):
    """One running container of a service: the proxy spreads requests over these rows."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="replica_set")
    number = models.PositiveSmallIntegerField()
    container_id = models.CharField(max_length=80)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    # Empty: the service's live revision (replicas started before revisions were recorded on them).
    revision = models.ForeignKey("ServiceRevision", null=True, blank=True, on_delete=models.CASCADE, related_name="replicas")
    restarts = models.PositiveIntegerField(default=0)
    # In a cluster environment: the Swarm task behind the row and the node it runs on.
    task_id = models.CharField(max_length=80, blank=True)
    node = models.CharField(max_length=255, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    # What the worker side last saw of the container (the deploy that started it, then the
    # reconciler): its engine state and whether it answered /ready, at ``checked_at``.
    state = models.CharField(max_length=32, blank=True)
    ready = models.BooleanField(default=False)
    state_error = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    # The last snapshot of its /metrics (``deployments.replica_metrics``: the reconciler and the
    # deploy tasks take it), which the Metrics tab and API read: what it answered at
    # ``metrics_at``; ``metrics_checked_at`` the last time it was asked, ``metrics_error`` why that failed.
    metrics = models.JSONField(default=dict, blank=True)
    metrics_at = models.DateTimeField(null=True, blank=True)
    metrics_checked_at = models.DateTimeField(null=True, blank=True)
    metrics_error = models.TextField(blank=True)

    class Meta:
        ordering = ["service", "number"]
        constraints = [models.UniqueConstraint(fields=["service", "number"], name="replica_unique_number")]

    def __str__(self) -> str:
        return f"{self.service_id} replica {self.number}"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class ServiceRevision(models.Model):
    """Which image a service served from when to when (``ended_at`` empty: the current one)."""

    class Reason(models.TextChoices):
        CREATE = "create", "Created"
        UPDATE = "update", "Updated"
        ROLLBACK = "rollback", "Rolled back"
        CANARY = "canary", "Canary"
        SHADOW = "shadow", "Shadow"

    class Role(models.TextChoices):
        LIVE = "live", "Live"
        CANARY = "canary", "Canary"
        SHADOW = "shadow", "Shadow"

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    # SET_NULL: the history outlives a deleted image (image_ref keeps its name); a rollback to it is refused.
    image = models.ForeignKey("registry.Image", null=True, on_delete=models.SET_NULL, related_name="+")
    image_ref = models.CharField(max_length=100)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    # What the gateway does with it while it is current (ended_at empty): take the traffic a
    # canary leaves (live), a weighted share (canary) or mirrored copies (shadow).
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.LIVE)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["service", "-number"]
        constraints = [models.UniqueConstraint(fields=["service", "number"], name="revision_unique_number")]

    def __str__(self) -> str:
        return f"{self.service_id} revision {self.number}"


class ServiceEvent(models.Model):
    """Something that happened to a service: deployed, a replica restarted, an update failed…"""

    class Level(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="events")
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # The service page lists a service's newest events first.
        indexes = [models.Index(fields=["service", "-created_at"], name="service_event_recent")]

    def __str__(self) -> str:
        return f"{self.level}: {self.message[:60]}"


class ServiceLoad(models.Model):
    """One autoscaler sample: replicas serving, scoring workers and how many were busy on average
    over the refresh period that ended ``at``, and what the rule asked for. ``counters`` holds each
    replica's busy-seconds counter, so the next sample can take the difference. Kept 24 h."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="loads")
    at = models.DateTimeField()
    replicas = models.PositiveSmallIntegerField()
    workers = models.PositiveIntegerField()
    busy = models.FloatField()
    utilization = models.FloatField(help_text="Percent of the workers busy")
    desired = models.PositiveSmallIntegerField()
    counters = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["service", "at"]
        # The autoscaler reads a service's newest samples; the page charts a time range of them.
        indexes = [models.Index(fields=["service", "at"], name="service_load_time")]

    def __str__(self) -> str:
        return f"{self.service_id} at {self.at:%H:%M:%S}: {self.replicas} replicas, {self.utilization:.0f}%"
