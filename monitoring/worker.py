"""Task side of data capture: pull the replicas' spools, store Parquet, acknowledge.

At-least-once, stored once: rows leave a replica's spool only when a later pull acknowledges them,
which happens after they are committed here; the request ids stored are indexed (CapturedRow), so
rows answered again (the worker died between store and acknowledgement) are skipped. A file is
written under a temporary name first, recorded in the same transaction as its request ids, then
renamed; ``recover()`` finishes a rename the worker died before and deletes files whose
transaction never committed. Files go through the ``capture`` storage (a folder under the data folder,
or a prefix of the portal's S3 bucket when workers run on several hosts: there a "rename" is a copy
then a delete). One collector at a time across every host (a PostgreSQL advisory lock; on SQLite,
which serves one host, a file lock in the data folder).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import io
import json
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib import error as urlerror
from urllib import request as urlrequest

from celery import shared_task
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from .models import Capture, CapturedRow, CaptureFile
from .services import internal_key

log = logging.getLogger(__name__)
PULL_PATH = "/_mlportal/capture"
BATCH = 1000
MAX_BATCHES = 50  # per replica per round; the rest waits for the next round
TIMEOUT = 10.0


# pg_advisory_lock key of the collector ("mlpcaptr" as a big-endian integer).
LOCK_KEY = int.from_bytes(b"mlpcaptr", "big") - 2**63


def capture_storage():
    """Where the Parquet files live (settings.STORAGES["capture"]); names are relative to it."""
    return storages["capture"]


def capture_root() -> Path:
    """The capture folder on this host, when the capture storage is a folder (the default)."""
    return Path(capture_storage().location)


def _is_folder(storage) -> bool:
    try:
        storage.path("")
    except NotImplementedError:
        return False
    return True


def _finish(storage, temp: str, final: str) -> None:
    """Moves a committed file from its temporary name to its final one (idempotent)."""
    if _is_folder(storage):
        os.replace(storage.path(temp), storage.path(final))
        return
    if not storage.exists(final):  # a copy that a dead worker had made is kept, not copied again
        with storage.open(temp, "rb") as handle:
            stored = storage.save(final, handle)
        if stored != final:  # never: names are new uuids
            raise RuntimeError(f"capture file {final} was stored as {stored}")
    storage.delete(temp)


def _walk(storage, folder: str = ""):
    """Every file name under ``folder`` of ``storage`` (a folder or a bucket prefix)."""
    try:
        folders, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in files:
        yield f"{folder}/{name}" if folder else name
    for sub in folders:
        yield from _walk(storage, f"{folder}/{sub}" if folder else sub)


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


BASE_COLUMNS = ("request_id", "time", "revision", "model_version", "latency_ms")


def _cell(value):
    """A value as one Parquet cell: scalars stay, anything nested becomes its JSON text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, default=str)


def flatten(row: dict) -> list[dict]:
    """One stored row per input record, one column per schema input field (``in_<field>``).

    A request whose input is a batch of n records (``{"input_df": [{...}, ...]}``) becomes n rows,
    ``<request id>#<i>`` when n > 1 (``#`` never occurs in a request id, so these never collide);
    a list prediction of the same length is split the same way. What ``score.py`` collected with
    ``ModelDataCollector`` becomes ``<identifier>.<feature>`` columns, split likewise.
    """
    base = {
        "request_id": str(row["request_id"]),
        "time": dt.datetime.fromtimestamp(row["time"], tz=dt.timezone.utc),
        # The service revision of the replica it was pulled from (collect_replica); None before that.
        "revision": row.get("revision"),
        "model_version": row.get("model_version") or "",
        "latency_ms": float(row.get("latency_ms") or 0.0),
    }
    inputs = row.get("inputs")
    records: list[dict] | None = None
    shared: dict = {}
    if isinstance(inputs, dict):
        for name, value in inputs.items():
            if records is None and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                records = [{f"in_{field}": _cell(cell) for field, cell in record.items()} for record in value]
            else:
                shared[f"in_{name}"] = _cell(value)
    elif inputs is not None:
        shared["inputs"] = json.dumps(inputs)
    n = len(records) if records else 1
    prediction = row.get("prediction", ...)
    collected = row.get("collected") or {}
    out = []
    for i in range(n):
        flat = dict(base, **shared)
        if n > 1:
            flat["request_id"] = f"{base['request_id']}#{i}"
        if records:
            flat.update(records[i])
        if prediction is not ...:
            split = isinstance(prediction, list) and n > 1 and len(prediction) == n
            flat["prediction"] = json.dumps(prediction[i] if split else prediction)
        for identifier, items in collected.items():
            if not isinstance(items, list) or not items:
                continue
            item = items[i] if len(items) == n else items[0] if len(items) == 1 else {"all": items}
            for feature, cell in (item.items() if isinstance(item, dict) else [("value", item)]):
                flat[f"{identifier}.{feature}"] = _cell(cell)
        out.append(flat)
    return out


def _table(flat: list[dict]):
    import pyarrow as pa

    columns: dict[str, None] = {}
    for row in flat:  # from_pylist takes its columns from the first row only: give it them all
        columns.update(dict.fromkeys(row))
    data = {name: [row.get(name) for row in flat] for name in columns}
    arrays = {}
    for name, values in data.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a field whose type changes between rows: text
            arrays[name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return pa.table(arrays)


def _partition(service_id, version: str, day: dt.date) -> str:
    return f"{service_id}/model_version={version or 'none'}/day={day.isoformat()}"


def store(service, rows: list[dict], *, after_write=None) -> int:
    """Store the rows not stored yet; returns how many were new. Raises when nothing could be stored
    (then nothing was: the caller must not acknowledge)."""
    import pyarrow.parquet as pq

    seen: dict[str, dict] = {}
    for row in rows:
        for flat in flatten(row):
            seen.setdefault(flat["request_id"], flat)
    known = set()
    ids = list(seen)
    for start in range(0, len(ids), 5000):
        known |= set(CapturedRow.objects.filter(service=service, request_id__in=ids[start:start + 5000])
                     .values_list("request_id", flat=True))
    fresh = [row for rid, row in seen.items() if rid not in known]
    if not fresh:
        return 0
    groups: dict[tuple[str, dt.date], list[dict]] = {}
    for row in fresh:
        groups.setdefault((row["model_version"], row["time"].date()), []).append(row)
    storage = capture_storage()
    written: list[tuple[dict, list[dict]]] = []
    try:
        for (version, day), group in groups.items():
            folder = _partition(service.pk, version, day)
            name = uuid.uuid4().hex
            temp, final = f"{folder}/.part-{name}.parquet.tmp", f"{folder}/part-{name}.parquet"
            buffer = io.BytesIO()
            pq.write_table(_table(group), buffer)
            temp = storage.save(temp, ContentFile(buffer.getvalue()))
            if _is_folder(storage):
                with open(storage.path(temp), "rb") as handle:
                    os.fsync(handle.fileno())
            written.append(({"model_version": version, "day": day, "path": final, "temp": temp}, group))
        if after_write is not None:
            after_write()  # tests: die between writing and recording
        with transaction.atomic():
            for fields, group in written:
                record = CaptureFile.objects.create(service=service, rows=len(group), **fields)
                CapturedRow.objects.bulk_create(
                    [CapturedRow(service=service, request_id=str(r["request_id"]), file=record) for r in group])
    except BaseException:
        for fields, _ in written:
            try:
                storage.delete(fields["temp"])
            except OSError as exc:
                log.warning("capture: could not remove %s: %s", fields["temp"], exc)
        raise
    for fields, _ in written:
        _finish(storage, fields["temp"], fields["path"])
    return len(fresh)


def recover() -> None:
    """Remove deleted services' folders; finish renames of committed files; delete temp files whose
    transaction never committed."""
    from monitoring.cleanup import sweep_deleted_services

    storage = capture_storage()
    sweep_deleted_services(storage)
    for name in list(_walk(storage)):
        base = name.rsplit("/", 1)[-1]
        if not (base.startswith(".part-") and base.endswith(".parquet.tmp")):
            continue
        record = CaptureFile.objects.filter(temp=name).first()
        if record is not None:
            _finish(storage, name, record.path)
        else:
            storage.delete(name)


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


# --- retention ----------------------------------------------------------------------------------

def apply_capture_retention(*, workspace_id, keep_days: int | None, today: dt.date | None = None) -> int:
    """Deletes the workspace's capture partitions (files, their rows' dedupe index) older than
    ``keep_days`` days; returns the rows deleted. None keeps everything."""
    if not keep_days:
        return 0
    cutoff = (today or timezone.now().date()) - dt.timedelta(days=keep_days)
    storage = capture_storage()
    deleted = 0
    old = CaptureFile.objects.filter(service__workspace_id=workspace_id, day__lt=cutoff)
    for record in list(old):
        with transaction.atomic():
            CaptureFile.objects.filter(pk=record.pk).delete()  # its CapturedRows go with it
        try:
            storage.delete(record.path)
        except OSError as exc:  # the row is gone, so the file is only space: say so and go on
            log.warning("capture retention: could not delete %s: %s", record.path, exc)
        deleted += record.rows
        if _is_folder(storage):
            try:
                os.rmdir(os.path.dirname(storage.path(record.path)))  # the day's folder, once empty
            except OSError:
                pass
    return deleted
