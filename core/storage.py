"""Stored files, one way for every app: streamed into Django's default storage with their size and
sha256, refused past a cap before anything is kept, removed again when the rows that would name
them are not written.

Callers store files before their transaction (no database lock is held across an upload) and
delete them when it fails; files that a committed change no longer needs go with
``delete_files_on_commit``.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from core.errors import PayloadTooLarge, PortalError

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
SPOOL_BYTES = 8 * 1024 * 1024  # kept in memory up to this, then spooled to a temporary file


@dataclass(frozen=True)
class StoredFile:
    storage_name: str
    size: int
    sha256: str


def chunks_of(content: bytes | IO[bytes] | Iterable[bytes]) -> Iterator[bytes]:
    """The bytes of ``content`` (bytes, a file object, a Django upload, or an iterable of bytes) in
    pieces of at most CHUNK."""
    if isinstance(content, (bytes, bytearray)):
        yield bytes(content)
        return
    if hasattr(content, "chunks"):
        yield from content.chunks(CHUNK)
        return
    if hasattr(content, "read"):
        while data := content.read(CHUNK):
            yield data
        return
    yield from content


def save_file(name: str, content: bytes | IO[bytes] | Iterable[bytes], *, limit: int | None = None,
              what: str = "file", field: str = "file", allow_empty: bool = True) -> StoredFile:
    """Streams ``content`` into storage under ``name`` (storage may pick a free variant of it).

    Past ``limit`` bytes: PayloadTooLarge naming ``what`` and ``field``, nothing kept. Empty when
    ``allow_empty`` is False: PortalError, nothing kept."""
    digest = hashlib.sha256()
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        for data in chunks_of(content):
            size += len(data)
            if limit is not None and size > limit:
                message = f"The {what} is over the limit of {limit} bytes: send a smaller one."
                raise PayloadTooLarge(message, fields={field: message})
            digest.update(data)
            spool.write(data)
        if size == 0 and not allow_empty:
            message = f"The {what} is empty: upload the file itself."
            raise PortalError(message, fields={field: message})
        spool.seek(0)
        stored = default_storage.save(name, File(spool, name=name.rsplit("/", 1)[-1]))
    return StoredFile(stored, size, digest.hexdigest())


def delete_files(names: Iterable[str]) -> None:
    """Removes stored files; one that cannot be removed is logged (it wastes space, harms nothing)."""
    for name in names:
        if not name:
            continue
        try:
            default_storage.delete(name)
        except OSError as exc:
            logger.warning("could not delete stored file %s: %s", name, exc)


def delete_files_on_commit(names: Iterable[str]) -> None:
    """Removes stored files once the current transaction commits (never when it rolls back)."""
    names = list(names)
    if names:
        transaction.on_commit(lambda: delete_files(names))


def open_file(name: str) -> IO[bytes]:
    return default_storage.open(name, "rb")


def read_file(name: str) -> bytes:
    with open_file(name) as handle:
        return handle.read()
