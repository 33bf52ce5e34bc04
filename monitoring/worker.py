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


def _flatten(row: dict) -> dict:
    """One column per input field: a one-record batch ({"input_df": [{...}]}) spreads its record."""
    out = {
        "request_id": row["request_id"],
        "time": dt.datetime.fromtimestamp(row["time"], tz=dt.timezone.utc),
        "model_version": row.get("model_version") or "",
        "latency_ms": float(row.get("latency_ms") or 0.0),
    }
    inputs = row.get("inputs")
    if isinstance(inputs, dict):
        for name, value in inputs.items():
            if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
                for field, cell in value[0].items():
                    out[f"in_{field}"] = cell
            elif value is None or isinstance(value, (str, int, float, bool)):
                out[f"in_{name}"] = value
            else:
                out[f"in_{name}"] = json.dumps(value)
    elif inputs is not None:
        out["inputs"] = json.dumps(inputs)
    if "prediction" in row:
        out["prediction"] = json.dumps(row["prediction"])
    return out


def _table(rows: list[dict]):
    import pyarrow as pa

    flat = [_flatten(r) for r in rows]
    try:
        return pa.Table.from_pylist(flat)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a field whose type changes between rows: text
        fixed = [{k: (v if k in ("request_id", "time", "model_version", "latency_ms") or v is None else str(v))
                  for k, v in r.items()} for r in flat]
        return pa.Table.from_pylist(fixed)


def _partition(service_id, version: str, day: dt.date) -> str:
    return f"{service_id}/model_version={version or 'none'}/day={day.isoformat()}"


def store(service, rows: list[dict], *, after_write=None) -> int:
    """Store the rows not stored yet; returns how many were new. Raises when nothing could be stored
    (then nothing was: the caller must not acknowledge)."""
    import pyarrow.parquet as pq

    seen: dict[str, dict] = {}
    for row in rows:
        seen.setdefault(str(row["request_id"]), row)
    known = set(CapturedRow.objects.filter(service=service, request_id__in=list(seen)).values_list("request_id", flat=True))
    fresh = [row for rid, row in seen.items() if rid not in known]
    if not fresh:
        return 0
    groups: dict[tuple[str, dt.date], list[dict]] = {}
    for row in fresh:
        day = dt.datetime.fromtimestamp(row["time"], tz=dt.timezone.utc).date()
        groups.setdefault((row.get("model_version") or "", day), []).append(row)
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
    """Finish renames of committed files; delete temp files whose transaction never committed."""
    storage = capture_storage()
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


def collect_replica(service, replica, settings_now: dict) -> tuple[int, int | None]:
    """Pull, store and acknowledge one replica's spool; returns (rows stored, dropped count)."""
    key = internal_key(service)
    ack, stored, dropped = None, 0, None
    for _ in range(MAX_BATCHES):
        answer = pull(replica, key, {"ack": ack, "settings": settings_now, "limit": BATCH})
        if answer is None:
            return stored, None
        dropped = answer.get("dropped", 0)
        rows = answer.get("rows") or []
        if not rows:
            return stored, dropped
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
