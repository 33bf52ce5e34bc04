"""Worker side: a run's outputs, stored as they stream out of its container (compute.runner's
`store_output`), with no copy of them on the worker's disk; all kept or none.

`OutputsWriter.add` streams one file into storage (``core.storage.save_file``: its sha256 computed
on the way, what it wrote removed when the stream or the disk fails); `commit` writes the rows in one transaction;
`abort` deletes every file it stored.
"""
from __future__ import annotations

import errno
import logging
from typing import IO

from django.db import transaction

from core.filestorage import StorageFull
from core.storage import delete_files, save_file
from runs.models import Run, RunOutput

logger = logging.getLogger(__name__)


class OutputsWriter:
    def __init__(self, run: Run):
        self.run = run
        self.rows: list[RunOutput] = []

    def add(self, path: str, size: int, source: IO[bytes]) -> None:
        """Stores one output file; a full disk raises OSError(ENOSPC), which compute turns into
        the run's "disk full" end."""
        output = RunOutput(run=self.run, workspace_id=self.run.workspace_id, path=path)
        try:
            stored = save_file(f"runs/{self.run.id}/outputs/{output.id}", source)
        except StorageFull as exc:
            raise OSError(errno.ENOSPC, exc.message) from exc
        output.storage_name, output.size, output.sha256 = stored.storage_name, stored.size, stored.sha256
        self.rows.append(output)

    def commit(self) -> list[RunOutput]:
        with transaction.atomic():
            RunOutput.objects.filter(run=self.run).delete()
            RunOutput.objects.bulk_create(self.rows)
        return self.rows

    def abort(self) -> None:
        delete_files([row.storage_name for row in self.rows])
        self.rows = []
