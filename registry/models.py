"""Models (versioned model files), manifests (frozen bundles of model versions + score.py + schema +
requirements) and images (Docker images built from one manifest).

Versions count per name inside a workspace (v1, v2, …); the database enforces it with a unique
constraint, and the services retry on a lost race.
"""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from core.logs import LogChunk


class ScanVerdict(models.TextChoices):
    SAFE = "safe", "Safe"
    UNKNOWN = "unknown", "Unknown globals"
    DANGEROUS = "dangerous", "Dangerous"
    NOT_SCANNED = "not_scanned", "Not scanned"


class Model(models.Model):
    """One version of a registered model file, e.g. ``model.pkl`` v3.

    The file itself lives in the default storage under ``file`` (a name the portal chose, never one a
    user typed); ``file_name`` is the name it is registered under and keeps inside an image's app dir.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=100)
    version = models.PositiveIntegerField()
    description = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)
    framework = models.CharField(max_length=32, blank=True)
    file_name = models.CharField(max_length=100)
    file = models.CharField(max_length=255, help_text="Storage name of the model file")
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    # Where it came from: a run's output (its path under outputs/), or an upload (no run, no path).
    # SET_NULL: a deleted run leaves the model, with its path saying it came from one.
    run = models.ForeignKey("runs.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="models")
    project = models.ForeignKey("runs.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="models")
    source_path = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # The scan of the file's opcodes at registration (registry.scanning); "" = registered before scans.
    scan_verdict = models.CharField(max_length=16, choices=ScanVerdict.choices, blank=True)
    scan_reason = models.TextField(blank=True, help_text="Why, in one or two sentences")
    scan_reason_code = models.CharField(max_length=32, blank=True)
    scan_format = models.CharField(max_length=32, blank=True, help_text="pickle, gzip+pickle, zip, tar, npy…")
    scan_globals = models.JSONField(default=list, blank=True, help_text="Each global the file names, with its verdict")
    scanned_at = models.DateTimeField(null=True, blank=True)
    # Unknown globals, or a part left unread that could hold code: a manifest takes it only when confirmed.
    scan_needs_confirmation = models.BooleanField(default=False)
    framework_version = models.CharField(max_length=64, blank=True, help_text="As recorded in the file")
    # A workspace owner's acceptance of a version that is not safe: manifests may then bundle it.
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    accepted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name", "version"], name="model_unique_version")]
        # The next version number and "latest version of <name>" read this index.
        indexes = [models.Index(fields=["workspace", "name", "-version"], name="model_ws_name_version")]

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def is_accepted(self) -> bool:
        return self.accepted_at is not None



class Manifest(models.Model):
    """An immutable bundle: model versions + score.py + service_schema.json + requirements.txt.

    Its files live in the default storage under ``manifests/<id>/``; ``files`` maps each path to
    ``{"size", "sha256"}`` and ``content_hash`` covers every file and every model's sha256.
    """

    class Runtime(models.TextChoices):
        PYTHON = "python", "Python"

    SCORE = "score.py"
    SCHEMA = "service_schema.json"
    REQUIREMENTS = "requirements.txt"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="manifests")
    name = models.CharField(max_length=63)
    version = models.PositiveIntegerField()
    runtime = models.CharField(max_length=16, choices=Runtime.choices, default=Runtime.PYTHON)
    model_versions = models.ManyToManyField(Model, through="ManifestModel", related_name="manifests")
    files = models.JSONField(default=dict)
    # The project its files were taken from, when they were (lineage only: the files are copies).
    project = models.ForeignKey("runs.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="manifests")
    requirements = models.JSONField(default=list, help_text="The requirement lines, validated")
    content_hash = models.CharField(max_length=64)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name", "version"], name="manifest_unique_version")]
        # The next version number and "latest version of <name>" read this index.
        indexes = [models.Index(fields=["workspace", "name", "-version"], name="manifest_ws_name_version")]

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def storage_name(self, path: str) -> str:
        return f"manifests/{self.id}/{path}"


class ManifestModel(models.Model):
    """A model version frozen into a manifest. RESTRICT: a used model version cannot vanish, but a
    workspace being deleted takes both with it."""

    manifest = models.ForeignKey(Manifest, on_delete=models.CASCADE, related_name="manifest_models")
    model = models.ForeignKey(Model, on_delete=models.RESTRICT, related_name="manifest_models")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["manifest", "position"]
        constraints = [models.UniqueConstraint(fields=["manifest", "model"], name="manifest_model_once")]

    def __str__(self) -> str:
        return f"{self.manifest} uses {self.model}"


class Image(models.Model):
    """A Docker image built from one manifest by the ``registry.tasks.build_image`` task."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        BUILDING = "building", "Building"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        # Being removed from the engine (registry.worker.image_remove): no service may start
        # from it; the row goes once the engine removed it, or returns to its status if it refused.
        DELETING = "deleting", "Deleting"

    FINISHED = (Status.SUCCEEDED, Status.FAILED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="images")
    name = models.CharField(max_length=63)
    version = models.PositiveIntegerField()
    manifest = models.ForeignKey(Manifest, on_delete=models.RESTRICT, related_name="images")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    tag = models.CharField(max_length=255)
    image_id = models.CharField(max_length=80, blank=True, help_text="The engine's id (sha256:…)")
    # The environment image it was built FROM: retention keeps that one while this row exists.
    env_image = models.CharField(max_length=255, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    build_seconds = models.FloatField(null=True, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, help_text="Why the build failed, one line")
    error_step = models.CharField(max_length=255, blank=True)
    error_log_tail = models.TextField(blank=True)
    log_size = models.PositiveIntegerField(default=0, help_text="Characters of build log stored")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life of the building worker")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name", "version"], name="image_unique_version")]
        # The next version number and "latest version of <name>" read this index.
        indexes = [models.Index(fields=["workspace", "name", "-version"], name="image_ws_name_version")]

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class ImageLogChunk(LogChunk):
    """A piece of an image's build log, in order of ``seq`` (the live-log offset, core.logs)."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="log_chunks")

    class Meta:
        ordering = ["image", "seq"]
        # The log endpoint reads an image's chunks after a seq; unique gives the index.
        constraints = [models.UniqueConstraint(fields=["image", "seq"], name="image_log_chunk_seq")]

    def __str__(self) -> str:
        return f"log chunk {self.seq} of image {self.image_id}"


class ModelAlias(models.Model):
    """A name (``production``, ``staging``, any) pointing at one version of a model; it moves.

    Every move is kept in ``ModelAliasEvent``, so "which version was in production when" is one
    query. Changed only through ``registry.aliases``."""

    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    model_name = models.CharField(max_length=100)
    alias = models.CharField(max_length=63)
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="aliases")
    set_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    set_at = models.DateTimeField()

    class Meta:
        ordering = ["model_name", "alias"]
        constraints = [models.UniqueConstraint(fields=["workspace", "model_name", "alias"], name="model_alias_unique")]

    def __str__(self) -> str:
        return f"{self.model_name}@{self.alias}"


class ModelAliasEvent(models.Model):
    """One move of an alias: from ``previous_version`` to ``version`` (None: removed), by whom, why."""

    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    model_name = models.CharField(max_length=100)
    alias = models.CharField(max_length=63)
    # The versions as numbers: the history outlives a deleted version.
    version = models.PositiveIntegerField(null=True, blank=True)
    previous_version = models.PositiveIntegerField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    at = models.DateTimeField()

    class Meta:
        ordering = ["-at", "-id"]
        # The model page's history of one model's aliases, newest first.
        indexes = [models.Index(fields=["workspace", "model_name", "alias", "-at"], name="model_alias_history")]

    def __str__(self) -> str:
        return f"{self.model_name}@{self.alias}: {self.previous_version} → {self.version}"
