"""Request-side changes to what the gateway does for a service: its limits, and (canary, shadow)
its traffic split. Each checks, writes rows and returns; the worker does the containers."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction

from deployments.models import Service
from core.errors import PortalError
from gateway.table import mark_changed
from workspaces.models import Role
from workspaces.services import activity_record, require_role

MAX_CONCURRENCY = 10_000
MAX_QUEUE = 100_000


def check_limit(value: Any, field: str, *, minimum: int, maximum: int, what: str) -> int | None:
    """A whole number from ``minimum`` to ``maximum``, or None for "the default"."""
    if value is None or value == "" or value == "default":
        return None
    if isinstance(value, bool):
        raise PortalError(f"{what} must be a whole number from {minimum} to {maximum}.", fields={field: "Not a number."})
    try:
        number = int(str(value).strip())
    except ValueError:
        raise PortalError(f"{what} must be a whole number from {minimum} to {maximum} (or 'default'); got {str(value)[:20]!r}.",
                          fields={field: "Not a whole number."}) from None
    if not minimum <= number <= maximum:
        raise PortalError(f"{what} must be from {minimum} to {maximum}; got {number}.", fields={field: "Out of range."})
    return number


def service_set_limits(*, service: Service, user, changes: dict[str, Any]) -> Service:
    """Sets the service's gateway limits: ``concurrency`` (requests answered at once) and
    ``queue`` (requests that may wait; past both, 503 with Retry-After). A key left out keeps its
    value; ``null`` / "default" goes back to the portal's default. The gateways on this host
    apply them at once; those on other hosts within their refresh interval."""
    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    unknown = sorted(set(changes) - {"concurrency", "queue"})
    if unknown:
        raise PortalError(f"Only concurrency and queue can be set here; not {', '.join(unknown)}.",
                          fields={k: "Unknown field." for k in unknown})
    if not changes:
        raise PortalError('Say which limit to set: {"concurrency": 8, "queue": 16}.',
                          fields={"concurrency": "Give a limit.", "queue": "Give a limit."})
    values = {}
    if "concurrency" in changes:
        values["max_concurrency"] = check_limit(changes["concurrency"], "concurrency", minimum=1, maximum=MAX_CONCURRENCY,
                                                what="The concurrency limit")
    if "queue" in changes:
        values["max_queue"] = check_limit(changes["queue"], "queue", minimum=0, maximum=MAX_QUEUE, what="The queue bound")
    with transaction.atomic():
        Service.objects.filter(pk=service.pk).update(**values)
        transaction.on_commit(mark_changed)
        service.refresh_from_db()
        activity_record(workspace=service.workspace, actor=user, verb="service.limits", target=service,
                        detail=limits_of(service))
    return service


def limits_of(service: Service) -> dict:
    """The limits in force: {"concurrency", "queue", "default_concurrency", "default_queue"}."""
    return {
        "concurrency": service.max_concurrency or settings.MLPORTAL_GATEWAY_CONCURRENCY,
        "queue": service.max_queue if service.max_queue is not None else settings.MLPORTAL_GATEWAY_QUEUE,
        "default_concurrency": settings.MLPORTAL_GATEWAY_CONCURRENCY, "default_queue": settings.MLPORTAL_GATEWAY_QUEUE,
    }


# --- safe rollouts: canary and shadow -----------------------------------------------------------

DEFAULT_BAKE_SECONDS = 300
MIN_BAKE_SECONDS, MAX_BAKE_SECONDS = 10, 7 * 24 * 3600
# Automatic rollback during the bake: the canary is aborted when, over at least MIN_REQUESTS of
# its own, its error rate passes the live one's by ERROR_POINTS percentage points, or its p99
# passes P99_FACTOR times the live one's (and by at least P99_MIN_MS).
DEFAULT_THRESHOLDS = {"error_points": 5.0, "p99_factor": 2.0, "p99_min_ms": 50.0, "min_requests": 20}
REPLICA_OFFSET = 100  # the new revision's replicas are numbered 101, 102… beside the live 1, 2…


def check_weight(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise PortalError(f"{field.capitalize()} must be a whole percentage from 1 to 99.", fields={field: "Not a number."})
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise PortalError(f"{field.capitalize()} must be a whole percentage from 1 to 99; got {str(value)[:20]!r}.",
                          fields={field: "Not a whole number."}) from None
    if not 1 <= number <= 99:
        raise PortalError(f"{field.capitalize()} must be from 1 to 99 (percent of requests); got {number}. To send all "
                          "traffic to the new revision, promote it; to send none, abort it.",
                          fields={field: "From 1 to 99."})
    return number


def check_thresholds(value: Any) -> dict:
    if value in (None, ""):
        return dict(DEFAULT_THRESHOLDS)
    if not isinstance(value, dict):
        raise PortalError('Thresholds must be an object like {"error_points": 5, "p99_factor": 2}.',
                          fields={"thresholds": "Not an object."})
    unknown = sorted(set(value) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise PortalError(f"Unknown threshold {unknown[0]!r}: use {', '.join(DEFAULT_THRESHOLDS)}.",
                          fields={"thresholds": "Unknown name."})
    out = dict(DEFAULT_THRESHOLDS)
    for name, given in value.items():
        try:
            number = float(given)
        except (TypeError, ValueError):
            raise PortalError(f"Threshold {name} must be a number.", fields={"thresholds": f"{name}: not a number."}) from None
        if number < 0 or number != number or number > 1e6:
            raise PortalError(f"Threshold {name} must be from 0 to 1000000.", fields={"thresholds": f"{name}: out of range."})
        out[name] = number
    return out


def _rollout_label(rollout: dict) -> str:
    return f"a {rollout.get('mode')} of revision {rollout.get('revision') or '(starting)'} (image {rollout.get('image_ref')})"


def service_rollout_start(*, service: Service, image: Any, user, canary: Any = None, shadow: Any = None,
                          bake_seconds: Any = None, thresholds: Any = None) -> Service:
    """Starts the new image's replicas beside the live ones, as a canary (``canary`` % of
    requests answered by it) or a shadow (``shadow`` % of requests mirrored to it, its answers
    dropped). Refused (nothing started): a weight outside 1–99, both at once, an image that is
    not built or is the live one, a service that is not healthy, another rollout in progress (409
    naming it). The worker starts the replicas; the gateway sends traffic once they are ready."""
    from deployments import services as deployments
    from gateway.tasks import start_rollout
    from core.errors import Conflict

    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    if canary not in (None, "") and shadow not in (None, ""):
        raise PortalError("Choose a canary or a shadow for the new revision, not both: a shadow's answers are never "
                          "returned, a canary's are.", fields={"canary": "Give canary or shadow.", "shadow": "Give canary or shadow."})
    if canary in (None, "") and shadow in (None, ""):
        raise PortalError("Say how much traffic the new revision gets: canary (percent answered by it) or shadow "
                          "(percent mirrored to it).", fields={"canary": "Required (or shadow)."})
    mode = "canary" if canary not in (None, "") else "shadow"
    weight = check_weight(canary if mode == "canary" else shadow, mode)
    bake = DEFAULT_BAKE_SECONDS if bake_seconds in (None, "") else check_limit(
        bake_seconds, "bake_seconds", minimum=MIN_BAKE_SECONDS, maximum=MAX_BAKE_SECONDS, what="The bake period (seconds)")
    limits = check_thresholds(thresholds)
    image = deployments._image_in_workspace(service, image)
    deployments.check_image_deployable(image)
    if image.pk == service.image_id:
        raise PortalError(f"Service '{service.name}' serves image {image.ref} already: choose another image for the {mode}.",
                          fields={"image": "The live image."})
    rollout = {"mode": mode, "status": "starting", "image": str(image.pk), "image_ref": image.ref, "weight": weight,
               "bake_seconds": bake, "thresholds": limits, "by": getattr(user, "pk", None)}
    with transaction.atomic():
        current = Service.objects.select_for_update().get(pk=service.pk)
        if current.rollout:
            raise Conflict(f"Service '{service.name}' has {_rollout_label(current.rollout)} in progress: promote or abort "
                           "it before starting another.", code="rollout_in_progress")
        if current.status != Service.Status.HEALTHY:
            raise Conflict(f"Service '{service.name}' is {current.status}: a {mode} starts from a healthy service.", code="busy")
        Service.objects.filter(pk=service.pk).update(rollout=rollout, last_update_error="")
        activity_record(workspace=service.workspace, actor=user, verb=f"service.{mode}", target=service,
                        detail={"image": image.ref, "weight": weight})
        deployments.event(service.pk, f"Starting a {mode} of image {image.ref} at {weight}% "
                                      f"({'answered by it' if mode == 'canary' else 'mirrored to it'}).")
        sid = str(service.pk)
        transaction.on_commit(lambda: start_rollout.delay(sid))
    service.refresh_from_db()
    return service


def service_rollout_weight(*, service: Service, weight: Any, user) -> Service:
    """Changes the running canary's (or shadow's) share, 1–99 %; the change is kept in the history."""
    from deployments import services as deployments
    from gateway.models import TrafficChange
    from core.errors import Conflict

    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    weight = check_weight(weight, "weight")
    with transaction.atomic():
        current = Service.objects.select_for_update().get(pk=service.pk)
        rollout = dict(current.rollout or {})
        if rollout.get("status") != "running":
            what = f"{_rollout_label(rollout)} that is {rollout.get('status')}" if rollout else "no canary or shadow"
            raise Conflict(f"Service '{service.name}' has {what}: start one with an update and canary=N first.",
                           code="no_rollout")
        before = rollout.get("weight")
        rollout["weight"] = weight
        Service.objects.filter(pk=service.pk).update(rollout=rollout)
        transaction.on_commit(mark_changed)  # every gateway on this host takes the new share at once
        TrafficChange.objects.create(service=current, revision=rollout["revision"], mode=rollout["mode"], action="weight",
                                     weight=weight, detail=f"from {before}%", created_by=user)
        deployments.event(service.pk, f"The {rollout['mode']} of revision {rollout['revision']} now gets {weight}% "
                                      f"(was {before}%).")
    service.refresh_from_db()
    return service


def service_rollout_finish(*, service: Service, user, action: str) -> Service:
    """``promote`` (the new revision takes all traffic, the old replicas stop) or ``abort`` (back
    to the live revision, the new replicas stop); the worker does the containers."""
    from gateway.tasks import finish_rollout
    from core.errors import Conflict

    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    if action not in ("promote", "abort"):
        raise PortalError("Say promote or abort.", fields={"action": "promote or abort"})
    with transaction.atomic():
        current = Service.objects.select_for_update().get(pk=service.pk)
        rollout = dict(current.rollout or {})
        if rollout.get("status") != "running":
            what = f"{_rollout_label(rollout)} that is {rollout.get('status')}" if rollout else "no canary or shadow"
            raise Conflict(f"Service '{service.name}' has {what}: nothing to {action}.", code="no_rollout")
        rollout.update(status="promoting" if action == "promote" else "aborting", finish_by=getattr(user, "pk", None),
                       finish_reason=f"{action}d by {getattr(user, 'username', 'someone')}")
        Service.objects.filter(pk=service.pk).update(rollout=rollout)
        transaction.on_commit(mark_changed)  # promoting or aborting, the new revision's share is 0 at once
        activity_record(workspace=service.workspace, actor=user, verb=f"service.{rollout['mode']}_{action}", target=service,
                        detail={"revision": rollout["revision"]})
        sid = str(service.pk)
        transaction.on_commit(lambda: finish_rollout.delay(sid))
    service.refresh_from_db()
    return service
