"""Projects (code + data + environment spec), their files, and experiment runs with logs, metrics
and outputs.

Resources people address (projects, files, runs, outputs) have UUID keys. The high-volume rows a
run appends by the thousand (log chunks, metric points, metric summaries) keep integer keys: they
are never addressed by id from outside, and a 16-byte key on a million metric points would double
the size of the indexes that the runs list and the detail chart read.
"""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from core.logs import LogChunk

# Foreign keys marked db_index=False lead a composite unique constraint or index already, which
# serves their lookups and cascades; a second single-column index would only slow inserts.

# A metric name is at most this long (mlportal_runtime.logger.MAX_NAME_LENGTH).
METRIC_NAME_MAX = 200


class Target(models.TextChoices):
    """Where a submitted run executes (what a project and `experiment submit -c` may name)."""

    DOCKER = "docker", "Docker"
    LOCAL = "local", "Local"


# A run logged from outside by the stock MLflow client against the portal's MLflow API: nothing of
# it executes here, so it is a run target but never a submit target.
EXTERNAL_TARGET = "external"
RUN_TARGETS = [*Target.values, EXTERNAL_TARGET]

# MLflow's own limits (mlflow/utils/validation.py), so a script moving between the two fits both.
PARAM_NAME_MAX = 250
PARAM_VALUE_MAX = 6000
TAG_NAME_MAX = 250
TAG_VALUE_MAX = 8000
NOTE_MAX = 50_000


class Project(models.Model):
    """A folder of code + data + environment spec (`requirements.txt`), with its run settings."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=63)
    description = models.TextField(blank=True)
    template = models.CharField(max_length=63, blank=True, help_text="Slug of the template it was made from")
    # A copy of the project's requirements.txt, kept in step by the services that write that file.
    requirements = models.TextField(blank=True)
    default_target = models.CharField(max_length=16, choices=Target.choices, default=Target.DOCKER)
    time_limit_s = models.PositiveIntegerField(default=3600)
    memory_mb = models.PositiveIntegerField(default=2048)
    cpus = models.FloatField(default=1.0)
    allow_network = models.BooleanField(default=False)
    # The most a run may write under outputs/ (None: the portal's MLPORTAL_RUN_OUTPUTS_MAX_MB).
    outputs_max_mb = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "name"], name="project_unique_name"),
            models.CheckConstraint(condition=Q(time_limit_s__gte=1), name="project_time_limit_positive"),
            models.CheckConstraint(condition=Q(memory_mb__gte=16), name="project_memory_min"),
            models.CheckConstraint(condition=Q(cpus__gt=0), name="project_cpus_positive"),
            models.CheckConstraint(condition=Q(default_target__in=Target.values), name="project_target_known"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("project-detail", args=[self.pk])

    @property
    def outputs_cap_mb(self) -> int:
        """The outputs cap its runs get: its own setting, never above the portal's maximum."""
        maximum = settings.MLPORTAL_RUN_OUTPUTS_MAX_MB
        return min(self.outputs_max_mb or maximum, maximum)

    @property
    def requirement_lines(self) -> list[str]:
        return requirement_lines(self.requirements)


def requirement_lines(text: str) -> list[str]:
    """The lines of a requirements.txt without comments and blank lines, as compute expects them."""
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


class ProjectFile(models.Model):
    """One file of a project; the bytes live in the default storage under `storage_name`."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="files", db_index=False)
    path = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_name = models.CharField(max_length=255)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["path"]
        # The unique constraint doubles as the index for "files of a project by path".
        constraints = [models.UniqueConstraint(fields=["project", "path"], name="project_file_unique_path")]

    def __str__(self) -> str:
        return f"{self.project.name}/{self.path}"

    @property
    def is_script(self) -> bool:
        return self.path.endswith(".py")


class Run(models.Model):
    """One execution of a project's script (kind=script) or of its environment build (kind=prepare)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PREPARING = "preparing", "Preparing"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELED = "canceled", "Canceled"
        TIMED_OUT = "timed_out", "Timed out"
        LOST = "lost", "Lost"

    class Kind(models.TextChoices):
        SCRIPT = "script", "Script"
        PREPARE = "prepare", "Prepare"

    ACTIVE = (Status.QUEUED, Status.PREPARING, Status.RUNNING)
    FINISHED = (Status.COMPLETED, Status.FAILED, Status.CANCELED, Status.TIMED_OUT, Status.LOST)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="runs")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.SCRIPT)
    script = models.CharField(max_length=255, blank=True)
    args = models.JSONField(default=list, blank=True)
    target = models.CharField(max_length=16, choices=Target.choices, default=Target.DOCKER)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    status_reason = models.TextField(blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    oom = models.BooleanField(default=False)
    image = models.CharField(max_length=255, blank=True)
    snapshot = models.CharField(max_length=255, blank=True, help_text="Storage name of the snapshot .tar")
    snapshot_sha256 = models.CharField(max_length=64, blank=True)
    container_id = models.CharField(max_length=80, blank=True)
    worker = models.CharField(max_length=255, blank=True, help_text="Host name of the worker running it")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The log lives in RunLogChunk rows; these count what was kept so the cap is cheap to check.
    log_bytes = models.BigIntegerField(default=0)
    log_truncated = models.BooleanField(default=False)
    # Free text a person writes about the run after it (MLflow keeps it as the mlflow.note.content tag).
    note = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="run_unique_number"),
            models.CheckConstraint(condition=Q(status__in=["queued", "preparing", "running", "completed", "failed", "canceled", "timed_out", "lost"]), name="run_status_known"),
            models.CheckConstraint(condition=Q(target__in=RUN_TARGETS), name="run_target_known"),
            models.CheckConstraint(condition=Q(kind__in=["script", "prepare"]), name="run_kind_known"),
        ]
        indexes = [
            # The runs list: a workspace's runs, newest first.
            models.Index(fields=["workspace", "-created_at"], name="run_ws_recent"),
            # A project's recent runs on its page.
            models.Index(fields=["project", "-created_at"], name="run_project_recent"),
            # The lost-run sweep: active runs by heartbeat age.
            models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat"),
        ]

    def __str__(self) -> str:
        return f"{self.project.name} #{self.number}"

    def get_absolute_url(self) -> str:
        return reverse("run-detail", args=[self.pk])

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def duration(self):
        """Time from start to end (or to now while it runs); None before it started."""
        if self.started_at is None:
            return None
        from django.utils import timezone

        return (self.ended_at or timezone.now()) - self.started_at

    @property
    def duration_s(self) -> float | None:
        value = self.duration
        return None if value is None else round(value.total_seconds(), 3)

    @property
    def display_script(self) -> str:
        return self.script if self.kind == self.Kind.SCRIPT else f"prepare ({self.target})"


class RunLogChunk(LogChunk):
    """A batch of log lines of a run, in order of `seq` (the live-log offset, core.logs)."""

    id = models.BigAutoField(primary_key=True)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="log_chunks", db_index=False)

    class Meta:
        ordering = ["run", "seq"]
        # The live log reads `seq >= offset` of one run; the constraint is that index.
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="run_log_unique_seq")]

    def __str__(self) -> str:
        return f"log chunk {self.seq} of run {self.run_id}"


class Metric(models.Model):
    """One logged metric point: a number (`value`) or a string (`text`), optionally at a `step`."""

    id = models.BigAutoField(primary_key=True)
    # No database-level foreign keys on the highest-volume table: PostgreSQL checks each one per row
    # at commit, which cost more than the COPY of the rows itself. Django's CASCADE still deletes a
    # run's points (one DELETE … WHERE run_id), and only the worker side, which holds the run, inserts.
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+", db_constraint=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metrics", db_index=False, db_constraint=False)
    name = models.CharField(max_length=METRIC_NAME_MAX)
    value = models.FloatField(null=True, blank=True)
    text = models.CharField(max_length=1000, blank=True)
    step = models.IntegerField(null=True, blank=True)
    logged_at = models.DateTimeField()

    class Meta:
        ordering = ["run", "name", "step", "id"]
        # A run's metrics page and chart: the points of one run by name and step.
        indexes = [models.Index(fields=["run", "name", "step"], name="metric_run_name_step")]

    def __str__(self) -> str:
        return f"{self.name}={self.value if self.value is not None else self.text}"


class RunMetricSummary(models.Model):
    """The last value of each metric of a run: what the runs list shows, sorts and filters by.

    Kept up to date by the worker as points arrive, so listing 10,000 runs sorted by "Accuracy"
    reads one row per run from an index instead of scanning a million points.
    """

    id = models.BigAutoField(primary_key=True)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metric_summaries", db_index=False)
    name = models.CharField(max_length=METRIC_NAME_MAX)
    value = models.FloatField(null=True, blank=True)
    text = models.CharField(max_length=1000, blank=True)
    step = models.IntegerField(null=True, blank=True)
    count = models.PositiveIntegerField(default=1)
    logged_at = models.DateTimeField()
    # The series downsampled for charts ({"steps", "values", "points"}), computed from `chart_count`
    # points: current while it equals `count`. The worker fills it when a run ends, so a page never
    # aggregates a million points; a live run's chart computes (and keeps) it on demand.
    chart = models.JSONField(null=True, blank=True)
    chart_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["run", "name"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="run_metric_summary_unique")]
        indexes = [
            # Runs list sorted or filtered by a metric (`?ordering=-metric:Accuracy`, `metric_gt`), and
            # the list of metric names a workspace's runs log (its columns).
            models.Index(fields=["workspace", "name", "value"], name="metric_summary_ws_name_value"),
        ]

    def __str__(self) -> str:
        return f"{self.name}={self.value if self.value is not None else self.text} (run {self.run_id})"


class RunChartCache(models.Model):
    """The whole chart answer of a finished run (`GET /api/v1/runs/<id>/series/` without a range),
    JSON gzipped once, so the metrics tab's one request reads a row instead of decoding, encoding
    and compressing ten series each time. `key` is "<series>:<points>" of the run's summaries when
    it was made: more points logged (an MLflow client may log after the end) make it stale."""

    run = models.OneToOneField(Run, on_delete=models.CASCADE, primary_key=True, related_name="chart_cache")
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=64)
    body = models.BinaryField()
    created_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"charts of run {self.run_id} ({self.key}, {len(self.body)} bytes)"


class RunParam(models.Model):
    """A parameter of a run: a name and its value as text, logged once (MLflow's rule: a second
    log with another value is refused, the same value again is a no-op)."""

    id = models.BigAutoField(primary_key=True)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="params", db_index=False)
    name = models.CharField(max_length=PARAM_NAME_MAX)
    value = models.TextField()

    class Meta:
        ordering = ["run", "name"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="run_param_unique_name")]
        indexes = [
            # The filter `params.max_depth = "4"` and the runs list's param columns and ordering read
            # one name across a workspace's runs. Values stay out of the key: up to 6,000 characters
            # would overflow a B-tree entry, and one name's rows in a workspace are few to scan.
            models.Index(fields=["workspace", "name"], name="run_param_ws_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name}={self.value[:40]}"


class RunTag(models.Model):
    """A tag of a run (key → value); unlike params, tags may be changed after the run."""

    id = models.BigAutoField(primary_key=True)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="tags", db_index=False)
    key = models.CharField(max_length=TAG_NAME_MAX)
    value = models.TextField(blank=True)

    class Meta:
        ordering = ["run", "key"]
        constraints = [models.UniqueConstraint(fields=["run", "key"], name="run_tag_unique_key")]
        # `tags.team = "churn"` across a workspace's runs (same reasoning as RunParam's index).
        indexes = [models.Index(fields=["workspace", "key"], name="run_tag_ws_key")]

    def __str__(self) -> str:
        return f"{self.key}={self.value[:40]}"


class RunOutput(models.Model):
    """A file the run wrote under `outputs/`, stored under `storage_name`."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="outputs", db_index=False)
    path = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_name = models.CharField(max_length=255)

    class Meta:
        ordering = ["path"]
        constraints = [models.UniqueConstraint(fields=["run", "path"], name="run_output_unique_path")]

    def __str__(self) -> str:
        return f"outputs/{self.path} of run {self.run_id}"
