"""Model version aliases (``production``, ``staging``, any name) and their history.

``model_alias_set`` moves an alias to a version and records the move; ``alias_history`` answers
"which version was in production when" as periods (version, from, until). A pipeline that updates
a service in an environment labelled production moves ``production`` (``is_production``).
"""
from __future__ import annotations

import re
from typing import Any

from django.db import transaction
from django.utils import timezone

from registry.models import Model, ModelAlias, ModelAliasEvent
from core.errors import NotFound, PortalError
from workspaces.models import Role, Workspace
from workspaces.services import activity_record, require_role

ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
PRODUCTION = "production"


def check_alias(value: Any) -> str:
    text = str(value or "").strip()
    if not ALIAS_RE.match(text) or text == "latest":
        message = (f"Alias {text[:40]!r} is not allowed: use 1–63 lowercase letters, digits, '-' or '_', starting with "
                   "a letter (like production or staging); 'latest' is what a bare name means already.")
        raise PortalError(message, code="invalid_alias", fields={"alias": message})
    return text


def is_production(environment) -> bool:
    """An environment is production when it is named so or a label says so
    (``{"stage": "production"}``, ``{"production": "true"}``)."""
    labels = environment.labels or {}
    values = {str(v).strip().lower() for v in labels.values()}
    flag = str(labels.get(PRODUCTION, "")).strip().lower() in ("1", "true", "yes")
    return environment.name.lower() == PRODUCTION or PRODUCTION in values or flag


def model_alias_set(*, model: Model, alias: Any, user=None, reason: str = "", check_role: bool = True) -> ModelAlias:
    """Points ``alias`` of ``model``'s name at ``model`` (this version) and records the move; the
    same version is a no-op. ``user`` None: the portal itself (a pipeline)."""
    alias = check_alias(alias)
    if check_role and user is not None:
        require_role(user=user, workspace=model.workspace, role=Role.CONTRIBUTOR)
    actor = user if getattr(user, "is_authenticated", False) else None
    now = timezone.now()
    with transaction.atomic():
        current = (ModelAlias.objects.select_for_update().select_related("model")
                   .filter(workspace_id=model.workspace_id, model_name=model.name, alias=alias).first())
        if current is not None and current.model_id == model.pk:
            return current
        previous = current.model.version if current is not None else None
        if current is None:
            current = ModelAlias.objects.create(workspace_id=model.workspace_id, model_name=model.name, alias=alias,
                                                model=model, set_by=actor, set_at=now)
        else:
            current.model, current.set_by, current.set_at = model, actor, now
            current.save(update_fields=["model", "set_by", "set_at"])
        ModelAliasEvent.objects.create(workspace_id=model.workspace_id, model_name=model.name, alias=alias,
                                       version=model.version, previous_version=previous, reason=reason[:500],
                                       actor=actor, at=now)
        activity_record(workspace=model.workspace, actor=actor, verb="model.alias_set", target=model,
                        detail={"alias": alias, "from": previous, "reason": reason[:200]})
    return current


def model_alias_remove(*, workspace: Workspace, model_name: str, alias: Any, user) -> None:
    alias = check_alias(alias)
    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    with transaction.atomic():
        current = (ModelAlias.objects.select_for_update().select_related("model")
                   .filter(workspace=workspace, model_name=model_name, alias=alias).first())
        if current is None:
            raise NotFound(f"Model {model_name} has no alias {alias!r}.", fields={"alias": "Unknown alias."})
        ModelAliasEvent.objects.create(workspace=workspace, model_name=model_name, alias=alias, version=None,
                                       previous_version=current.model.version, reason="removed", actor=user,
                                       at=timezone.now())
        current.delete()
        activity_record(workspace=workspace, actor=user, verb="model.alias_removed", target=current.model,
                        detail={"alias": alias})


def aliases_of(workspace_id, model_name: str) -> list[dict]:
    """The model's aliases now: [{"alias", "version", "set_at", "set_by"}]."""
    rows = ModelAlias.objects.filter(workspace_id=workspace_id, model_name=model_name).select_related("model", "set_by")
    return [{"alias": a.alias, "version": a.model.version, "ref": a.model.ref, "set_at": a.set_at,
             "set_by": a.set_by.username if a.set_by else None} for a in rows.order_by("alias")]


def alias_history(workspace_id, model_name: str, alias: str | None = None) -> list[dict]:
    """Periods, newest first: [{"alias", "version", "from", "until" (None: still), "set_by", "reason"}].
    Answers "which version was in production when" for ``alias="production"``."""
    events = (ModelAliasEvent.objects.filter(workspace_id=workspace_id, model_name=model_name)
              .select_related("actor").order_by("alias", "at", "id"))
    if alias:
        events = events.filter(alias=alias)
    periods: list[dict] = []
    open_by_alias: dict[str, dict] = {}
    for event in events:
        before = open_by_alias.pop(event.alias, None)
        if before is not None:
            before["until"] = event.at
        if event.version is not None:
            period = {"alias": event.alias, "version": event.version, "ref": f"{model_name}:{event.version}",
                      "from": event.at, "until": None, "set_by": event.actor.username if event.actor else None,
                      "reason": event.reason}
            periods.append(period)
            open_by_alias[event.alias] = period
    periods.sort(key=lambda p: p["from"], reverse=True)
    return periods
