"""Request-side changes to what the gateway does for a service: its limits, and (canary, shadow)
its traffic split. Each checks, writes rows and returns; the worker does the containers."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction

from deployments.models import Service
from workspaces.errors import PortalError
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
    value; ``null`` / "default" goes back to the portal's default. The gateway applies them
    within its refresh interval."""
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
