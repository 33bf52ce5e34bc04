"""The request side of retention: the policy a workspace owner sets. The daily sweep that applies
it is the worker side, ``retention.worker``.
"""
from __future__ import annotations

from retention.models import RetentionPolicy
from retention.selectors import policy_of
from core.errors import PortalError
from workspaces.models import Role, Workspace
from workspaces.services import activity_record, require_role

MAX_KEEP = 100_000


def retention_policy_update(*, workspace: Workspace, user, **values) -> RetentionPolicy:
    """Sets some of the policy's numbers (None clears one: kept for good); owners only."""
    require_role(user=user, workspace=workspace, role=Role.OWNER)
    unknown = sorted(set(values) - set(RetentionPolicy.FIELDS))
    if unknown:
        raise PortalError(f"Unknown retention setting {', '.join(unknown)}: use {', '.join(RetentionPolicy.FIELDS)}.",
                          fields={k: "Not a setting." for k in unknown})
    policy = policy_of(workspace)
    for name, value in values.items():
        if value in (None, ""):
            setattr(policy, name, None)
            continue
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise PortalError(f"{name} must be a whole number, not {str(value)[:40]!r}.", fields={name: "Not a number."}) from None
        if not 1 <= number <= MAX_KEEP:
            message = f"{name} must be between 1 and {MAX_KEEP} (or empty: keep for good); {number} is not."
            raise PortalError(message, fields={name: message})
        setattr(policy, name, number)
    policy.save()
    activity_record(workspace=workspace, actor=user, verb="retention.changed", target=workspace,
                    detail={k: getattr(policy, k) for k in RetentionPolicy.FIELDS})
    return policy
