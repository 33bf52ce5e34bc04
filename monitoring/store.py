"""Captured rows as Parquet files: the capture storage, writing a batch, recovery, retention.

A batch is flattened (one row per input record, one column per input field) and written per
partition ``<service id>/model_version=<v>/day=<d>/part-<uuid>.parquet``, under a temporary name in
the staging folder first (``.staging/.part-<uuid>.parquet.tmp``), recorded in the same transaction
as its request ids (CapturedRow, the dedupe index), then renamed. ``recover()`` finishes a rename a
worker died before and deletes files whose transaction never committed: each round it lists the
staging folder and the top level only, so it stays as cheap with a year of files as with one.
Files go through the ``capture`` storage (a folder under the data folder, or a prefix of the
portal's S3 bucket when workers run on several hosts: there a "rename" is a copy then a delete).
The collector (``monitoring/worker.py``) pulls the replicas and calls ``store``.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import uuid
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import transaction
from django.utils import timezone

from .models import CapturedRow, CaptureFile

log = logging.getLogger(__name__)
STAGING = ".staging"  # every temporary name; never a service id (those are UUIDs), so never swept
_whole_store_checked = False  # the once-per-process look for temporary files of the old layout


def capture_storage():
    """Where the Parquet files live (settings.STORAGES["capture"]); names are relative to it."""
    return storages["capture"]


def capture_root() -> Path:
    """The capture folder on this host, when the capture storage is a folder (the default)."""
    return Path(capture_storage().location)


def is_folder(storage) -> bool:
    """True when ``storage`` is a folder on this host (the default), False for a bucket."""
    try:
        storage.path("")
    except NotImplementedError:
        return False
    return True


def _finish(storage, temp: str, final: str) -> None:
    """Moves a committed file from its temporary name to its final one (idempotent)."""
    if is_folder(storage):
        target = storage.path(final)
        os.makedirs(os.path.dirname(target), exist_ok=True)  # the temp was written in the staging folder
        os.replace(storage.path(temp), target)
        return
    if not storage.exists(final):  # a copy that a dead worker had made is kept, not copied again
        with storage.open(temp, "rb") as handle:
            stored = storage.save(final, handle)
        if stored != final:  # never: names are new uuids
            raise RuntimeError(f"capture file {final} was stored as {stored}")
    storage.delete(temp)


def walk(storage, folder: str = ""):
    """Every file name under ``folder`` of ``storage`` (a folder or a bucket prefix)."""
    try:
        folders, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in files:
        yield f"{folder}/{name}" if folder else name
    for sub in folders:
        yield from walk(storage, f"{folder}/{sub}" if folder else sub)


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
            temp, final = f"{STAGING}/.part-{name}.parquet.tmp", f"{folder}/part-{name}.parquet"
            buffer = io.BytesIO()
            pq.write_table(_table(group), buffer)
            temp = storage.save(temp, ContentFile(buffer.getvalue()))
            if is_folder(storage):
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
    """Finishes the renames of committed files and deletes temporary files whose transaction never
    committed, from a listing of the staging folder (where only a collector that died leaves
    anything), and removes deleted services' folders (a listing of the top level). So a round's
    recovery costs what is in flight, not what is stored. Files written before the staging folder
    (in their partition, beside the final files) are looked for once per process, in a walk of the
    whole store."""
    from monitoring.cleanup import sweep_deleted_services

    global _whole_store_checked
    storage = capture_storage()
    sweep_deleted_services(storage)
    whole = not _whole_store_checked
    names = list(walk(storage) if whole else walk(storage, STAGING))  # the whole store includes the staging folder
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if not (base.startswith(".part-") and base.endswith(".parquet.tmp")):
            continue
        record = CaptureFile.objects.filter(temp=name).first()
        if record is not None:
            _finish(storage, name, record.path)
        else:
            storage.delete(name)
    if whole:
        _whole_store_checked = True  # only once every file it found was handled


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
        if is_folder(storage):
            try:
                os.rmdir(os.path.dirname(storage.path(record.path)))  # the day's folder, once empty
            except OSError:
                pass
    return deleted
