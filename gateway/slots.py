"""Per-service slots shared by every web-server process on this host, so a service's concurrency
limit and queue bound hold for the portal as a whole, not once per uvicorn worker.

Slot ``i`` of a service is a POSIX record lock (``fcntl.lockf``) on byte ``i`` of the service's
file under the slots folder (``MLPORTAL_GATEWAY_SLOTS_DIR``, by default
``MLPORTAL_DATA_DIR/gateway-slots``); the queue's places are the bytes from ``QUEUE_BASE`` on.
Taking a free slot is one non-blocking system call, giving it back another. The kernel drops the
locks of a process that dies, so a killed worker never leaves slots taken. The files stay empty
(locks may lie beyond the end of a file) and are never removed: a process may hold one open, and a
new file under the same name would be a second, separate set of slots.

Record locks belong to a process, not to a file descriptor: a process that locks a byte it already
holds succeeds again, so each ``SlotFile`` remembers the bytes its process holds and never asks for
those; and closing any descriptor of the file drops all of the process's locks on it, so a file is
opened once per process and kept open (``SlotFolder`` caches them).
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
from pathlib import Path

QUEUE_BASE = 1 << 20  # the queue's places start here; a concurrency limit stays far below it
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class SlotFile:
    """The slots of one service in this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.held: set[int] = set()

    def take(self, first: int, count: int) -> int | None:
        """Locks the first free byte of ``first`` … ``first + count - 1`` and returns it; None when
        every one of them is held (by this process or another)."""
        for index in range(first, first + count):
            if index in self.held:
                continue
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, index, os.SEEK_SET)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    continue  # another process holds it
                raise
            self.held.add(index)
            return index
        return None

    def give(self, index: int) -> None:
        """Unlocks a byte this process took."""
        if index in self.held:
            self.held.discard(index)
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, index, os.SEEK_SET)

    def holders(self, first: int, count: int) -> int:
        """How many of the bytes ``first`` … ``first + count - 1`` any process holds (a probe for
        tests and metrics: it takes and gives back each free one)."""
        busy = 0
        for index in range(first, first + count):
            if index in self.held:
                busy += 1
                continue
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, index, os.SEEK_SET)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    busy += 1
                    continue
                raise
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, index, os.SEEK_SET)
        return busy


class SlotFolder:
    """One ``SlotFile`` per service under ``folder``, opened once per process."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, SlotFile] = {}

    def for_service(self, service_id: str) -> SlotFile:
        slot_file = self.files.get(service_id)
        if slot_file is None:
            slot_file = self.files[service_id] = SlotFile(self.folder / f"{_SAFE.sub('_', str(service_id))}.slots")
        return slot_file
