"""The gateway's routing table: every serving service with its key digests, limits, revisions and
replicas, read from the database in one go and swapped in whole, so a request never waits on the
database and never sees half of a change.

``load_table`` is synchronous (the Django ORM); the gateway runs it off the event loop every
``MLPORTAL_GATEWAY_REFRESH_SECONDS``. A change that must take effect at once — a key regenerated,
a service deleted, a rollout started, reweighted, promoted or aborted, limits set — also calls
``mark_changed()`` once it is committed: that touches a file beside the gateway's slots, whose
modification time every web process on the host looks at every ``CHANGE_POLL_SECONDS`` (one
``stat``, no query), reading the table as soon as it moves. So an old key stops working within
about a twentieth of a second plus one query, whatever the refresh period; web processes on other
hosts still see it at their next periodic read.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CHANGE_POLL_SECONDS = 0.05
CHANGED_FILE = "table.changed"  # in the slots folder; never a service id (those are UUIDs)


@dataclass(frozen=True)
class Replica:
    """One container of a revision, reached on its published port."""

    number: int
    host: str
    port: int
    container_id: str

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


@dataclass(frozen=True)
class Revision:
    """A revision of a service that takes traffic: its number, image and model versions, replicas,
    and its share: ``role`` live (the rest of the traffic), canary (``weight`` % of it) or shadow
    (``weight`` % mirrored, answers dropped)."""

    number: int
    image_ref: str
    model_version: str
    replicas: tuple[Replica, ...]
    role: str = "live"
    weight: int = 100


@dataclass(frozen=True)
class Route:
    """What the gateway needs to answer for one service."""

    service_id: str
    name: str
    workspace: str
    status: str
    key_digests: tuple[bytes, ...]
    proxy_key: str
    concurrency: int
    queue: int
    live: Revision | None
    canary: Revision | None = None
    shadow: Revision | None = None

    def accepts(self, digest: bytes) -> bool:
        """Whether a key with this sha256 digest is one of the service's keys; every key is
        compared, in constant time, so timing tells nothing about which one (or how much) matched."""
        matched = False
        for stored in self.key_digests:
            matched |= hmac.compare_digest(digest, stored)
        return matched

    def revision(self, number: int) -> Revision | None:
        for revision in (self.live, self.canary, self.shadow):
            if revision is not None and revision.number == number:
                return revision
        return None

    @property
    def revisions(self) -> list[Revision]:
        return [r for r in (self.live, self.canary, self.shadow) if r is not None]


@dataclass
class Table:
    by_name: dict[str, list[Route]] = field(default_factory=dict)
    by_id: dict[str, Route] = field(default_factory=dict)

    def candidates(self, ref: str) -> list[Route]:
        """The services ``ref`` (a name, or an id) may mean; a name is unique per workspace only."""
        found = self.by_name.get(ref)
        if found:
            return found
        try:
            route = self.by_id.get(str(uuid.UUID(ref)))
        except ValueError:
            return []
        return [route] if route is not None else []

    def find(self, ref: str, key: str) -> Route | None:
        """The service ``ref`` that takes ``key``; None for an unknown service or a wrong key
        (the same answer, so a caller cannot tell names from keys)."""
        digest = key_digest(key)
        found = None
        for route in self.candidates(ref):
            if route.accepts(digest) and found is None:
                found = route
        return found

    def replicas(self) -> set[Replica]:
        return {replica for routes in self.by_name.values() for route in routes
                for revision in route.revisions for replica in revision.replicas}


def changed_path() -> Path:
    from django.conf import settings

    return Path(settings.MLPORTAL_GATEWAY_SLOTS_DIR) / CHANGED_FILE


def mark_changed() -> None:
    """Tells every web process on this host to read the routing table now (call after commit).
    Best effort: without the file they read it at their next periodic refresh."""
    path = changed_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
        os.utime(path)
    except OSError:
        pass


def changed_stamp(path: Path) -> int | None:
    """The change file's modification time in ns (None while there is none)."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def load_table(*, model_versions: dict | None = None) -> Table:
    """Reads every service that may answer (not deleting or deleted) with its replicas and
    revisions; ``model_versions`` caches image id → "model.pkl:3" (images never change)."""
    from django.conf import settings
    from django.db import close_old_connections

    from deployments.models import Service, ServiceReplica, ServiceRevision
    from deployments.selectors import service_plain_keys
    from registry.models import ManifestModel

    close_old_connections()
    model_versions = {} if model_versions is None else model_versions
    rows = list(Service.objects.exclude(status__in=[Service.Status.DELETING, Service.Status.DELETED]).values(
        "pk", "name", "workspace__name", "status", "primary_key", "secondary_key", "proxy_key", "max_concurrency",
        "max_queue", "image_id", "image__manifest_id", "image__tag", "rollout"))
    ids = [row["pk"] for row in rows]
    replicas: dict = {}
    for row in ServiceReplica.objects.filter(service_id__in=ids).values("service_id", "number", "host", "port",
                                                                     "container_id", "revision_id"):
        replicas.setdefault((row["service_id"], row["revision_id"]), []).append(row)
    revisions: dict = {}
    for row in (ServiceRevision.objects.filter(service_id__in=ids, ended_at__isnull=True)
                .values("pk", "service_id", "number", "image_id", "image_ref", "image__manifest_id", "role")):
        revisions.setdefault(row["service_id"], []).append(row)
    manifests = {row["image__manifest_id"] for row in rows} | {
        r["image__manifest_id"] for rs in revisions.values() for r in rs}
    missing = {m for m in manifests if m is not None and m not in model_versions}
    if missing:
        found: dict = {m: [] for m in missing}
        for link in ManifestModel.objects.filter(manifest_id__in=missing).select_related("model").order_by("model__name"):
            found[link.manifest_id].append(link.model.ref)
        model_versions.update({m: ", ".join(refs) for m, refs in found.items()})
    default_concurrency = settings.MLPORTAL_GATEWAY_CONCURRENCY
    default_queue = settings.MLPORTAL_GATEWAY_QUEUE
    table = Table()
    for row in rows:
        primary, secondary, proxy_key = service_plain_keys(row)
        by_role: dict[str, Revision] = {}
        rollout = row["rollout"] or {}
        for rev in revisions.get(row["pk"], []):
            role = rev["role"] or "live"
            mine = replicas.get((row["pk"], rev["pk"]), [])
            if role == "live":  # replicas started before revisions were recorded on them are the live one's
                mine = mine + replicas.get((row["pk"], None), [])
            weight = 100
            if role in ("canary", "shadow"):
                # Only a running rollout gets its share; promoting or aborting, its rows are about to go.
                running = rollout.get("status") == "running" and rollout.get("revision") == rev["number"]
                weight = int(rollout.get("weight") or 0) if running else 0
            by_role[role] = Revision(
                number=rev["number"], image_ref=rev["image_ref"],
                model_version=model_versions.get(rev["image__manifest_id"], ""), role=role, weight=weight,
                replicas=tuple(sorted((Replica(number=r["number"], host=r["host"], port=r["port"],
                                               container_id=r["container_id"]) for r in mine), key=lambda r: r.number)))
        live = by_role.get("live")
        if live is None and replicas.get((row["pk"], None)):  # no revision row yet (it is being created)
            live = Revision(number=0, image_ref=row["image__tag"], model_version=model_versions.get(row["image__manifest_id"], ""),
                            replicas=tuple(Replica(number=r["number"], host=r["host"], port=r["port"],
                                                   container_id=r["container_id"]) for r in replicas[(row["pk"], None)]))
        route = Route(
            service_id=str(row["pk"]), name=row["name"], workspace=row["workspace__name"], status=row["status"],
            key_digests=tuple(key_digest(k) for k in (primary, secondary) if k), proxy_key=proxy_key,
            # The limits as set: the gateway's slots (gateway.slots) are shared by every web process.
            concurrency=row["max_concurrency"] or default_concurrency,
            queue=row["max_queue"] if row["max_queue"] is not None else default_queue,
            live=live, canary=by_role.get("canary"), shadow=by_role.get("shadow"),
        )
        table.by_name.setdefault(route.name, []).append(route)
        table.by_id[route.service_id] = route
    return table
