"""Environment images (``mlportal-env:<hash>``, compute.envimage): tracked as runs and image builds
prepare them, and removed by the daily retention once nothing has used them for
MLPORTAL_ENV_IMAGE_KEEP_DAYS, except the MLPORTAL_ENV_IMAGE_KEEP_LAST most recently used.

They are portal-wide (every workspace's runs and service images share them), so the rule is the
administrator's setting, not a workspace's policy. Their tag is their content, so two portals on one
engine may use the same image; it carries the ``mlportal.portal`` label of the one that built it, and
only that portal removes it (another forgets its use and leaves the image to its owner). Worker side
only: every function here may call the engine.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.utils import timezone

from retention.models import EnvironmentImage

logger = logging.getLogger(__name__)


def env_image_prepare(*, requirements: list[str], log: Callable[[str], None]) -> str:
    """Returns the tag of the environment image of ``requirements`` on the portal's engine, built
    when missing (compute.envimage.ensure_env_image and its errors), and records its use."""
    from compute.envimage import ensure_env_image
    from workspaces.instance import portal_instance

    tag = ensure_env_image(
        base_image=settings.MLPORTAL_BASE_IMAGE, requirements=requirements, wheel_cache=settings.MLPORTAL_WHEEL_CACHE,
        log=log, base_url=settings.MLPORTAL_DOCKER_URL, timeout_s=settings.MLPORTAL_BUILD_TIMEOUT,
        source_packages=settings.MLPORTAL_SOURCE_PACKAGES, portal=portal_instance(),
    )
    environment_image_used(tag=tag)
    return tag


def environment_image_used(*, tag: str) -> EnvironmentImage:
    """Records that ``tag`` was just used, with its engine id and size when the engine tells them
    (a failed look keeps what the row had: the use is what matters)."""
    from compute.engine import EngineError
    from compute.images import image_info

    fields = {"last_used_at": timezone.now()}
    try:
        info = image_info(tag, base_url=settings.MLPORTAL_DOCKER_URL)
    except EngineError as exc:
        logger.warning("environment image %s: its size is unknown (%s)", tag, exc)
        info = None
    if info:
        fields.update(engine_id=info["id"], size=info["size"], built_by=info["portal"][:64])
    return EnvironmentImage.objects.update_or_create(tag=tag, defaults=fields)[0]


def environment_images_remove(*, now=None) -> dict:
    """Removes from the engine, then forgets, the environment images retention_plan's rule picks
    (retention.selectors.environment_images_plan). One used again since it was picked is left.
    Returns {"images": n, "bytes": freed, "errors": [...], "others": [tags]}; an image a container
    still runs is left (the engine refuses) and named in the errors; one another portal built is
    forgotten but left in the engine, and named in "others"."""
    from compute.engine import EngineError
    from compute.images import image_info, remove_image
    from retention.selectors import environment_images_plan
    from workspaces.instance import portal_instance

    summary = {"images": 0, "bytes": 0, "errors": [], "others": []}
    for row in environment_images_plan(now=now):
        # Forget it first, guarded on the use seen: a run or a build that used it meanwhile keeps it.
        if not EnvironmentImage.objects.filter(pk=row["id"], last_used_at=row["last_used_at"]).delete()[0]:
            continue
        try:
            info = image_info(row["tag"], base_url=settings.MLPORTAL_DOCKER_URL)
            if info and info["portal"] and info["portal"] != portal_instance():
                summary["others"].append(row["tag"])  # another portal built it: its retention decides
                continue
            remove_image(row["tag"], base_url=settings.MLPORTAL_DOCKER_URL)
        except EngineError as exc:
            EnvironmentImage.objects.get_or_create(tag=row["tag"], defaults={
                "last_used_at": row["last_used_at"], "engine_id": row["engine_id"], "size": row["size"] or None,
                "built_by": row["built_by"]})
            summary["errors"].append(f"{row['tag']}: {exc}")
            continue
        summary["images"] += 1
        summary["bytes"] += row["bytes"] or 0
    return summary
