"""Which portal installation this is: an id carried by every container it starts (label
``mlportal.portal``), so two portals (or test sessions) sharing a Docker engine never sweep or
reconcile each other's containers."""
from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import connection


def portal_instance() -> str:
    """Returns ``MLPORTAL_INSTANCE_ID`` when set, else a hash of the database's engine and name (the
    host is left out, since workers on several hosts may call it by different names)."""
    configured = getattr(settings, "MLPORTAL_INSTANCE_ID", "")
    if configured:
        return configured
    db = connection.settings_dict
    identity = "|".join(str(db.get(k) or "") for k in ("ENGINE", "NAME"))
    return hashlib.sha256(identity.encode()).hexdigest()[:16]
