"""Task side of data capture: pull the replicas' spools, store Parquet, acknowledge; drift.

At-least-once, stored once: rows leave a replica's spool only when a later pull acknowledges them,
which happens after they are committed (``monitoring/store.py``: a file under a temporary name,
recorded with its request ids in one transaction, then renamed; ``recover()`` at each round's start
finishes what a dead worker left); the request ids stored are indexed (CapturedRow), so rows
answered again (the worker died between store and acknowledgement) are skipped. One collector at a
time across every host (a PostgreSQL advisory lock; on SQLite, which serves one host, a file lock
in the data folder).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from urllib import error as urlerror
from urllib import request as urlrequest

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from .models import Capture
from .services import internal_key
from .store import recover, store

log = logging.getLogger(__name__)
PULL_PATH = "/_mlportal/capture"
BATCH = 1000
MAX_BATCHES = 50  # per replica per round; the rest waits for the next round
TIMEOUT = 10.0


# pg_advisory_lock key of the collector ("mlpcaptr" as a big-endian integer).
LOCK_KEY = int.from_bytes(b"mlpcaptr", "big") - 2**63


class PullError(Exception):
    pass


def pull(replica, key: str, body: dict) -> dict | None:
    """One pull; None when the replica has no capture endpoint for us (started before issue 16)."""
    req = urlrequest.Request(f"http://{replica.host}:{replica.port}{PULL_PATH}", data=json.dumps(body).encode(),
                             method="POST", headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urlrequest.urlopen(req, timeout=TIMEOUT) as answer:  # noqa: S310 - the replica's own address
            return json.loads(answer.read())
    except urlerror.HTTPError as exc:
        if exc.code == 404:
            return None
        raise PullError(f"replica {replica.number} answered {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise PullError(f"replica {replica.number}: {exc}") from None


@contextmanager
def _one_collector():
    """Yields True when this process is the only collector now (on any host), else False."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
            got = cursor.fetchone()[0]
        try:
            yield got
        finally:
            if got:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        return
    lock_path = Path(settings.DATA_DIR) / "capture.lock"
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _revision_number(service, replica) -> int | None:
    """The revision the replica serves: its own (a canary's, a shadow's), else the live one."""
    from deployments.models import ServiceRevision

    if replica.revision_id is not None:
        return ServiceRevision.objects.filter(pk=replica.revision_id).values_list("number", flat=True).first()
    return (ServiceRevision.objects.filter(service=service, ended_at__isnull=True, role=ServiceRevision.Role.LIVE)
            .order_by("-number").values_list("number", flat=True).first())


def collect_replica(service, replica, settings_now: dict) -> tuple[int, int | None]:
    """Pull, store and acknowledge one replica's spool; returns (rows stored, dropped count).
    Each row is stored with the revision the replica serves (a container serves one revision)."""
    key = internal_key(service)
    revision = _revision_number(service, replica)
    ack, stored, dropped = None, 0, None
    for _ in range(MAX_BATCHES):
        answer = pull(replica, key, {"ack": ack, "settings": settings_now, "limit": BATCH})
        if answer is None:
            return stored, None
        dropped = answer.get("dropped", 0)
        rows = answer.get("rows") or []
        if not rows:
            return stored, dropped
        for row in rows:
            row["revision"] = revision
        stored += store(service, rows)
        ack = rows[-1]["seq"]
    pull(replica, key, {"ack": ack, "settings": settings_now, "limit": 1})
    return stored, dropped


def collect_all() -> int:
    """One round over every serving service's replicas; returns the rows stored."""
    from deployments.models import Service

    with _one_collector() as alone:
        if not alone:
            return 0  # another collector is at it
        recover()
        total = 0
        for service in Service.objects.filter(status__in=Service.SERVING).prefetch_related("replica_set"):
            capture = Capture.objects.filter(service=service).first()
            settings_now = capture.as_settings() if capture else {"mode": "off", "percent": 100.0}
            # The spool's bound travels with the switch, so a changed bound reaches running replicas.
            settings_now["spool_rows"] = settings.MLPORTAL_CAPTURE_SPOOL_ROWS
            dropped = dict(capture.dropped_by_replica) if capture else {}
            for replica in service.replica_set.all():
                try:
                    stored, seen_dropped = collect_replica(service, replica, settings_now)
                except (PullError, IntegrityError) as exc:
                    log.warning("capture: service %s: %s", service.name, exc)
                    continue
                total += stored
                if seen_dropped is not None:
                    dropped[replica.container_id] = seen_dropped
            if capture is not None:
                Capture.objects.filter(pk=capture.pk).update(
                    dropped=sum(dropped.values()), last_collected_at=timezone.now(), dropped_by_replica=dropped)
        return total


@shared_task(name="monitoring.tasks.collect_capture")
def collect_capture() -> int:
    return collect_all()


# --- drift --------------------------------------------------------------------------------------

MAX_DRIFT_ROWS = 50_000


def _reference_frame(service, settings):
    """(frame with feature-named columns, description) of a drift reference."""
    import pandas as pd

    from .selectors import captured_frame, input_features

    if settings.reference == "file":
        from runs.models import ProjectFile
        from core.storage import open_file

        from core.errors import PortalError

        row = ProjectFile.objects.filter(project_id=settings.project_id, path=settings.path).first()
        if row is None:  # deleted since the settings were saved
            raise PortalError(f"The reference file {settings.path!r} is no longer in project "
                              f"{settings.project.name if settings.project_id else '(deleted)'}; pick another reference.",
                              fields={"path": "no such file in the project"})
        with open_file(row.storage_name) as handle:
            if settings.path.lower().endswith(".parquet"):
                frame = pd.read_parquet(handle)
            else:
                frame = pd.read_csv(handle, nrows=1_000_000, low_memory=False)
        return frame, f"file {settings.project.name}/{settings.path}"
    frame = captured_frame(service, since=settings.window_start, until=settings.window_end)
    features = input_features(frame.columns)
    frame = frame[list(features.values())].rename(columns={c: n for n, c in features.items()})
    return frame, f"capture {settings.window_start.isoformat()} to {settings.window_end.isoformat()}"


def compute_drift(*, service, settings, trigger: str, actor=None, since=None, until=None, progress=None):
    """Computes, stores and returns a DriftReport of the current capture against the reference.
    Raises PortalError when there is nothing to compare (no current rows, no common feature).
    ``progress(step, fraction)``, when given, hears where it is (a drift job shows it)."""
    from deployments.models import ServiceEvent
    from core.errors import PortalError
    from workspaces.services import activity_record

    from . import drift
    from .models import DriftReport
    from .selectors import captured_frame, input_features

    def say(step: str, fraction: float) -> None:
        if progress is not None:
            progress(step, fraction)

    until = until or timezone.now()
    since = since or until - dt.timedelta(hours=settings.current_hours)
    say("Reading the captured rows", 0.05)
    current = captured_frame(service, since=since, until=until)
    features = input_features(current.columns)
    if current.empty or not features:
        raise PortalError(f"No captured inputs between {since:%Y-%m-%d %H:%M} and {until:%Y-%m-%d %H:%M} UTC to compare; "
                          "turn capture on (inputs or both) or widen the window.", fields={"since": "no captured inputs"})
    current = current[list(features.values())].rename(columns={c: n for n, c in features.items()})
    say("Reading the reference", 0.25)
    reference, described = _reference_frame(service, settings)
    common = [name for name in features if name in reference.columns]
    if not common:
        raise PortalError(f"The reference ({described}) has none of the service's input fields ({', '.join(sorted(features)[:8])}…); "
                          "pick a file with the same columns.", fields={"path": "no common column"})
    if reference.empty:
        raise PortalError(f"The reference ({described}) has no rows.", fields={"reference": "empty"})
    if len(current) > MAX_DRIFT_ROWS:
        current = current.tail(MAX_DRIFT_ROWS)
    if len(reference) > MAX_DRIFT_ROWS:
        reference = reference.sample(MAX_DRIFT_ROWS, random_state=0)
    results = drift.compare(reference, current, features=common, threshold=settings.feature_threshold,
                            progress=lambda done, total, name: say(f"Comparing {name} ({done + 1} of {total} features)",
                                                                   0.4 + 0.55 * done / total))
    say("Saving the report", 0.97)
    share = drift.share_drifted(results)
    drifted = share >= settings.share_threshold
    previous = DriftReport.objects.filter(service=service).first()
    with transaction.atomic():
        report = DriftReport.objects.create(
            service=service, trigger=trigger, reference=described[:300], current_from=since, current_to=until,
            reference_rows=len(reference), current_rows=len(current), features=[r.as_dict() for r in results],
            share_drifted=share, drifted=drifted)
        if drifted and (previous is None or not previous.drifted):
            names = [r.name for r in results if r.drifted]
            message = (f"Drift: {len(names)} of {len([r for r in results if r.score is not None])} input features drifted "
                       f"({', '.join(names[:10])}) against {described}; share {share:.0%} ≥ threshold {settings.share_threshold:.0%}.")
            ServiceEvent.objects.create(service=service, level=ServiceEvent.Level.WARNING, message=message)
            activity_record(workspace=service.workspace, actor=actor, verb="service.drift_detected", target=service,
                            detail={"report": report.pk, "features": names, "share": share})
            transaction.on_commit(lambda: _send_drift(service, report, trigger))
    return report


def _send_drift(service, report, trigger: str) -> None:
    """Sends drift_detected; a receiver that fails is logged, never undoes the report or the event."""
    from .models import DriftReport
    from .signals import drift_detected

    for receiver, result in drift_detected.send_robust(sender=DriftReport, service=service, report=report, trigger=trigger):
        if isinstance(result, Exception):
            log.error("drift of %s: receiver %s failed: %s", service.name, getattr(receiver, "__name__", receiver), result)


def compute_scheduled_drift() -> int:
    """The hourly round: every serving service with scheduled drift settings; returns reports made."""
    from deployments.models import Service
    from core.errors import PortalError

    from .models import DriftSettings

    made = 0
    for settings in DriftSettings.objects.filter(scheduled=True, service__status__in=Service.SERVING).select_related("service", "project"):
        try:
            compute_drift(service=settings.service, settings=settings, trigger="schedule")
            made += 1
        except PortalError as exc:  # nothing captured this hour, a reference file gone: next hour
            log.info("drift of %s skipped: %s", settings.service.name, exc)
    return made


@shared_task(name="monitoring.tasks.compute_drift")
def compute_drift_task() -> int:
    return compute_scheduled_drift()
