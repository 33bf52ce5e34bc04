"""Worker side: a run's outputs, stored as they stream out of its container (compute.runner's
`store_output`), with no copy of them on the worker's disk; all kept or none.

`OutputsWriter.add` streams one file into storage (its sha256 computed on the way) and removes
what it wrote when the stream or the disk fails; `commit` writes the rows in one transaction;
`abort` deletes every file it stored.
"""
from __future__ import annotations

import errno
import hashlib
import io
import logging
from typing import IO

from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import transaction

from runs.models import Run, RunOutput
from workspaces.filestorage import StorageFull

logger = logging.getLogger(__name__)


class _Hashing(io.RawIOBase):
    """A read-only stream that hashes and counts what passes through (no seek: storage reads it once).
    A real io object (``closed``, ``readable``, ``seekable``), as the S3 storage's upload asks for them."""

    def __init__(self, source: IO[bytes]):
        super().__init__()
        self.source = source
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True


def save_stream(name: str, source: IO[bytes]) -> tuple[str, int, str]:
    """Streams `source` into storage under `name`; returns (storage name, size, sha256). On any
    failure (a full disk, a broken stream) the partly written file is removed and the error raised."""
    name = default_storage.get_available_name(name)
    reader = _Hashing(source)
    try:
        stored = default_storage.save(name, File(reader, name=name.rsplit("/", 1)[-1]))
    except BaseException:
        try:
            if default_storage.exists(name):
                default_storage.delete(name)
        except OSError as exc:
            logger.warning("could not remove the partly written %s: %s", name, exc)
        raise
    return stored, reader.size, reader.digest.hexdigest()


class OutputsWriter:
    def __init__(self, run: Run):
        self.run = run
        self.rows: list[RunOutput] = []

    def add(self, path: str, size: int, source: IO[bytes]) -> None:
        """Stores one output file; a full disk raises OSError(ENOSPC), which compute turns into
        the run's "disk full" end."""
        output = RunOutput(run=self.run, workspace_id=self.run.workspace_id, path=path)
        try:
            stored, written, sha256 = save_stream(f"runs/{self.run.id}/outputs/{output.id}", source)
        except StorageFull as exc:
            raise OSError(errno.ENOSPC, exc.message) from exc
        output.storage_name, output.size, output.sha256 = stored, written, sha256
        self.rows.append(output)

    def commit(self) -> list[RunOutput]:
        with transaction.atomic():
            RunOutput.objects.filter(run=self.run).delete()
            RunOutput.objects.bulk_create(self.rows)
        return self.rows

    def abort(self) -> None:
        for row in self.rows:
            try:
                default_storage.delete(row.storage_name)
            except OSError as exc:
                logger.warning("could not delete stored output %s: %s", row.storage_name, exc)
        self.rows = []
