"""The portal's file storage on one machine: Django's FileSystemStorage that never leaves a partly
written file behind and says so plainly when the disk is full.

Every stored file (uploads, snapshots, outputs, logs, manifests, build contexts) is written through
Django's default storage, so this is the one place a full disk is handled: the partial file is
removed and `StorageFull` (a PortalError answered as 507 Insufficient Storage in the one error
shape) is raised. Services store files before they write rows, or inside the transaction that the
error then rolls back, so the database stays as it was.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil

from django.core.files.storage import FileSystemStorage

from core.errors import PortalError

logger = logging.getLogger(__name__)

FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class StorageFull(PortalError):
    status_code = 507
    default_code = "storage_full"


def storage_full_message(free_bytes: int | None) -> str:
    free = f" ({free_bytes / (1024 * 1024):.0f} MiB free)" if free_bytes is not None else ""
    return ("The portal's storage is full" + free + ": nothing was stored. Ask an operator to free space "
            "(the Storage page shows what uses it and what retention frees) or to give the data folder a bigger "
            "disk, then try again.")


class PortalFileSystemStorage(FileSystemStorage):
    def _save(self, name, content):
        full_path = self.path(name)
        existed = os.path.lexists(full_path)
        try:
            return super()._save(name, content)
        except BaseException as exc:
            if not existed and os.path.lexists(full_path):
                try:
                    os.remove(full_path)
                except OSError as cleanup:
                    logger.warning("could not remove the partly written %s: %s", full_path, cleanup)
            if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
                try:
                    free = shutil.disk_usage(self.location).free
                except OSError:
                    free = None
                logger.error("storage full at %s while writing %s", self.location, name)
                raise StorageFull(storage_full_message(free)) from exc
            raise
