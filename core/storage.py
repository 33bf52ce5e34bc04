"""Stored files, one way for every app: streamed into Django's default storage with their size and
sha256, refused past a cap before anything is kept, removed again when the rows that would name
them are not written.

Callers store files before their transaction (no database lock is held across an upload) and
delete them when it fails; files that a committed change no longer needs go with
``delete_files_on_commit``.
"""
from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from core.errors import PayloadTooLarge, PortalError

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024


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


class _Metered(io.RawIOBase):
    """A read-only stream over ``content`` that hashes and counts what passes through and stops
    past ``limit`` (no seek: storage reads it once, straight to its file, with no spooled copy).
    A real io object (``closed``, ``readable``, ``seekable``), as the S3 storage's upload asks for them."""

    def __init__(self, content, limit: int | None, what: str, field: str) -> None:
        super().__init__()
        self.pieces = chunks_of(content)
        self.buffer = b""
        self.limit, self.what, self.field = limit, what, field
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buffer) < n:
            piece = next(self.pieces, None)
            if piece is None:
                break
            self.buffer += piece
        data, self.buffer = (self.buffer, b"") if n < 0 else (self.buffer[:n], self.buffer[n:])
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            message = f"The {self.what} is over the limit of {self.limit} bytes: send a smaller one."
            raise PayloadTooLarge(message, fields={self.field: message})
        self.digest.update(data)
        return data

    def readable(self) -> bool:
        return True


def save_file(name: str, content: bytes | IO[bytes] | Iterable[bytes], *, limit: int | None = None,
              what: str = "file", field: str = "file", allow_empty: bool = True) -> StoredFile:
    """Streams ``content`` into storage under ``name`` (or a free variant of it), hashing it on
    the way. Past ``limit`` bytes: PayloadTooLarge naming ``what`` and ``field``; empty when
    ``allow_empty`` is False: PortalError. On any failure (those, a full disk, a broken stream)
    the partly written file is removed and nothing is kept."""
    name = default_storage.get_available_name(name)
    reader = _Metered(content, limit, what, field)
    try:
        stored = default_storage.save(name, File(reader, name=name.rsplit("/", 1)[-1]))
        if reader.size == 0 and not allow_empty:
            message = f"The {what} is empty: upload the file itself."
            raise PortalError(message, fields={field: message})
    except BaseException:
        try:
            if default_storage.exists(name):
                default_storage.delete(name)
        except OSError as exc:
            logger.warning("could not remove the partly written %s: %s", name, exc)
        raise
    return StoredFile(stored, reader.size, reader.digest.hexdigest())


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
