"""Reads of the Storage page: what each project, model and image uses, and what retention frees next."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Count, Max, Sum
from django.utils import timezone

from registry.models import Image, Model
from registry.selectors import services_using_images
from retention.models import EnvironmentImage, RetentionPolicy
from runs.models import Project, ProjectFile, Run, RunOutput
from workspaces.models import Workspace


def policy_of(workspace: Workspace) -> RetentionPolicy:
    return RetentionPolicy.objects.filter(workspace=workspace).first() or RetentionPolicy(workspace=workspace)


def _kept(*, at, rank: int, days: int | None, last: int | None, now) -> bool:
    """Kept when no rule is set, or when one of the set rules keeps it."""
    if days is None and last is None:
        return True
    return (days is not None and at is not None and at >= now - timedelta(days=days)) or (last is not None and rank <= last)


@dataclass
class Plan:
    runs: list[dict] = field(default_factory=list)  # {"id", "name", "project", "bytes"}
    images: list[dict] = field(default_factory=list)  # {"id", "ref", "tag", "bytes"}
    # Portal-wide, whichever workspace asks: {"id", "tag", "engine_id", "bytes" (freed: 0 for another
    # portal's, which is only forgotten), "size", "ours", "last_used_at"}
    environment_images: list[dict] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return (sum(r["bytes"] for r in self.runs) + sum(i["bytes"] or 0 for i in self.images)
                + sum(e["bytes"] or 0 for e in self.environment_images))

    def as_dict(self) -> dict:
        environment = [{**e, "last_used_at": e["last_used_at"].isoformat()} for e in self.environment_images]
        return {"runs": self.runs, "images": self.images, "environment_images": environment,
                "run_count": len(self.runs), "image_count": len(self.images),
                "environment_image_count": len(environment), "bytes": self.bytes}


def environment_images_in_use(tags) -> set[str]:
    """Which of these environment images a service image was built from (its row exists) or an
    unfinished run runs in."""
    tags = list(tags)
    return (set(Image.objects.filter(env_image__in=tags).values_list("env_image", flat=True))
            | set(Run.objects.filter(image__in=tags, status__in=Run.ACTIVE).values_list("image", flat=True)))


def environment_images_plan(*, now=None) -> list[dict]:
    """The environment images the daily retention removes now: not used for
    MLPORTAL_ENV_IMAGE_KEEP_DAYS, not among the MLPORTAL_ENV_IMAGE_KEEP_LAST most recently used,
    and not in use (environment_images_in_use); oldest use first. One another portal built
    ("ours" False) is only forgotten: it frees no bytes here (retention.envimages)."""
    from django.conf import settings

    from workspaces.instance import portal_instance

    now = now or timezone.now()
    rows = list(EnvironmentImage.objects.order_by("-last_used_at", "-id")
                .values("id", "tag", "engine_id", "size", "last_used_at", "built_by"))
    candidates = [r for r in rows[settings.MLPORTAL_ENV_IMAGE_KEEP_LAST:]
                  if r["last_used_at"] < now - timedelta(days=settings.MLPORTAL_ENV_IMAGE_KEEP_DAYS)]
    used = environment_images_in_use(r["tag"] for r in candidates)
    me = portal_instance()
    plan = []
    for r in reversed(candidates):
        if r["tag"] in used:
            continue
        ours = r["built_by"] in ("", me)
        plan.append({"id": r["id"], "tag": r["tag"], "engine_id": r["engine_id"], "bytes": (r["size"] or 0) if ours else 0,
                     "size": r["size"] or 0, "ours": ours, "built_by": r["built_by"], "last_used_at": r["last_used_at"]})
    return plan


def retention_plan(workspace: Workspace, *, now=None) -> Plan:
    """What applying the workspace's retention now would remove."""
    now = now or timezone.now()
    policy = policy_of(workspace)
    plan = Plan()
    output_bytes = dict(RunOutput.objects.filter(workspace=workspace).values("run_id").annotate(total=Sum("size"))
                        .values_list("run_id", "total"))
    ranks: dict = {}
    finished = (Run.objects.filter(workspace=workspace).exclude(status__in=Run.ACTIVE)
                .select_related("project").order_by("project_id", "-ended_at", "-number"))
    for run in finished:
        ranks[run.project_id] = rank = ranks.get(run.project_id, 0) + 1
        size = (output_bytes.get(run.id) or 0) + (run.log_bytes or 0)
        if not size or _kept(at=run.ended_at or run.created_at, rank=rank, days=policy.run_files_keep_days,
                             last=policy.run_files_keep_last, now=now):
            continue
        plan.runs.append({"id": str(run.id), "name": str(run), "project": run.project.name, "bytes": size})
    images = list(Image.objects.filter(workspace=workspace, status__in=[Image.Status.SUCCEEDED, Image.Status.FAILED])
                  .order_by("name", "-version"))
    used = {s.image_id for s in services_using_images([i.pk for i in images], include_deleted=True)}
    per_name: dict[str, int] = {}
    for image in images:
        per_name[image.name] = rank = per_name.get(image.name, 0) + 1
        if image.pk in used or _kept(at=image.created_at, rank=rank, days=policy.unused_images_keep_days,
                                     last=policy.unused_images_keep_last, now=now):
            continue
        plan.images.append({"id": str(image.pk), "ref": image.ref, "tag": image.tag, "bytes": image.size or 0})
    plan.environment_images = environment_images_plan(now=now)
    return plan


def storage_usage(workspace: Workspace) -> dict:
    """Bytes used per project (files, run outputs, run logs), per model (all versions) and per image."""
    projects = []
    files = dict(ProjectFile.objects.filter(project__workspace=workspace).values("project_id")
                 .annotate(total=Sum("size")).values_list("project_id", "total"))
    outputs = dict(RunOutput.objects.filter(workspace=workspace).values("run__project_id")
                   .annotate(total=Sum("size")).values_list("run__project_id", "total"))
    logs = {row["project_id"]: row for row in Run.objects.filter(workspace=workspace).values("project_id")
            .annotate(total=Sum("log_bytes"), runs=Count("id"))}
    for project in Project.objects.filter(workspace=workspace).order_by("name"):
        log_row = logs.get(project.id, {})
        entry = {"id": str(project.id), "name": project.name, "files_bytes": files.get(project.id) or 0,
                 "outputs_bytes": outputs.get(project.id) or 0, "logs_bytes": log_row.get("total") or 0,
                 "runs": log_row.get("runs") or 0}
        entry["bytes"] = entry["files_bytes"] + entry["outputs_bytes"] + entry["logs_bytes"]
        projects.append(entry)
    models = [{"name": row["name"], "versions": row["versions"], "bytes": row["total"] or 0, "latest": row["latest"]}
              for row in Model.objects.filter(workspace=workspace).values("name")
              .annotate(versions=Count("id"), total=Sum("size"), latest=Max("version")).order_by("name")]
    images = list(Image.objects.filter(workspace=workspace).order_by("name", "-version"))
    used: dict = {}
    for service in services_using_images([i.pk for i in images]):
        used.setdefault(service.image_id, []).append(service.name)
    image_rows = [{"id": str(i.pk), "ref": i.ref, "tag": i.tag, "status": i.status, "bytes": i.size or 0,
                   "services": used.get(i.pk, [])} for i in images]
    for rows in (projects, models, image_rows):
        rows.sort(key=lambda r: -r["bytes"])
    environment = environment_images_usage()
    return {
        "projects": projects, "models": models, "images": image_rows, "environment_images": environment,
        "totals": {"projects": sum(p["bytes"] for p in projects), "models": sum(m["bytes"] for m in models),
                   "images": sum(i["bytes"] for i in image_rows),
                   "environment_images": sum(e["bytes"] for e in environment)},
    }


def environment_images_usage() -> list[dict]:
    """Every tracked environment image (portal-wide), most recently used first, with whether
    something uses it now: {"tag", "bytes", "last_used_at" (ISO), "in_use"}."""
    rows = list(EnvironmentImage.objects.order_by("-last_used_at", "-id")[:200])
    used = environment_images_in_use(r.tag for r in rows)
    return [{"tag": r.tag, "bytes": r.size or 0, "last_used_at": r.last_used_at.isoformat(), "in_use": r.tag in used}
            for r in rows]
