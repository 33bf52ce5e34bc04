"""The next version or number of something, taken under the workspace's lock.

Writers queue on the workspace's row (PostgreSQL ``SELECT … FOR NO KEY UPDATE``; SQLite serialises
writers itself), so racing writers take consecutive numbers in turn; should two still meet, the
unique constraint lets one win and the other retries with the next number.
"""
from __future__ import annotations

import time

from django.db import IntegrityError, transaction
from django.db.models import Max

from core.errors import Conflict

ATTEMPTS = 5


def create_next(cls, *, workspace_pk, field: str, scope: dict, what: str, **fields):
    """Creates ``cls(**scope, **fields)`` with ``field`` set to one more than the highest among the
    rows matching ``scope`` (1 for the first), inside its own savepoint; returns the row."""
    from workspaces.models import Workspace

    for attempt in range(ATTEMPTS):
        try:
            with transaction.atomic():
                # NO KEY UPDATE: writers of numbers queue behind each other, while inserts that only
                # point at the workspace (activity, logs, services) are not held up by it.
                list(Workspace.objects.select_for_update(no_key=True).filter(pk=workspace_pk).values_list("pk", flat=True))
                latest = cls.objects.filter(**scope).aggregate(n=Max(field))["n"] or 0
                return cls.objects.create(**scope, **{field: latest + 1}, **fields)
        except IntegrityError:
            if attempt == ATTEMPTS - 1:
                raise Conflict(f"Too many {what} are being created at once; try again.") from None
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")
