"""Tar helpers shared by the runners and the image builders.

Only regular files and directories ever cross into or out of a container: links, devices and
names that would escape their folder are dropped (from outputs) or refused (in snapshots).
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# A fixed mtime keeps build contexts byte-identical for identical content.
FIXED_MTIME = 1_700_000_000
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")


class UnsafePath(ValueError):
    """A path would land outside its folder (absolute, ``..``, empty or control characters)."""


def clean_relative_path(name: str) -> str:
    """Returns ``name`` as a normalised relative POSIX path; raises UnsafePath when it is
    absolute, climbs with ``..``, is empty or holds NUL/newline/backslash characters."""
    if not name or any(ch in name for ch in ("\x00", "\n", "\r", "\\")):
        raise UnsafePath(f"unsafe file name {name!r}")
    if name.startswith("/"):
        raise UnsafePath(f"file name {name!r} must be relative, not absolute")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts:
        raise UnsafePath(f"unsafe file name {name!r}")
    if ".." in parts:
        raise UnsafePath(f"file name {name!r} must not contain '..'")
    return "/".join(parts)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, *, mode: int = 0o644,
              uid: int = 0, gid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = FIXED_MTIME
    info.uid, info.gid = uid, gid
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar: tarfile.TarFile, name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = FIXED_MTIME
    info.uid, info.gid = uid, gid
    tar.addfile(info)


def tree_files(root: Path) -> list[Path]:
    """Returns the regular files under ``root`` in a stable order, without bytecode caches."""
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIPPED_DIRS for part in rel.parts) or path.suffix in SKIPPED_SUFFIXES:
            continue
        if path.is_file() and not path.is_symlink():
            files.append(path)
    return files


def add_tree(tar: tarfile.TarFile, root: Path, prefix: str) -> None:
    """Adds the files under ``root`` as ``prefix/<relative path>`` (root-owned, 0644)."""
    add_dir(tar, prefix)
    made = {prefix}
    for path in tree_files(root):
        rel = path.relative_to(root).as_posix()
        parent = posixpath.dirname(f"{prefix}/{rel}")
        add_parents(tar, parent, made, uid=0, gid=0)
        add_bytes(tar, f"{prefix}/{rel}", path.read_bytes())


def add_parents(tar: tarfile.TarFile, directory: str, made: set[str], *, uid: int, gid: int) -> None:
    missing = []
    while directory and directory not in made:
        missing.append(directory)
        directory = posixpath.dirname(directory)
    for name in reversed(missing):
        add_dir(tar, name, uid=uid, gid=gid)
        made.add(name)


def _snapshot_members(snapshot: Path) -> Iterator[tuple[str, tarfile.TarInfo, tarfile.TarFile]]:
    """Yields ``(clean name, TarInfo, TarFile)`` for the files and folders of a snapshot tar;
    raises UnsafePath for a member that would escape the project folder."""
    with tarfile.open(snapshot, "r:*") as src:
        for member in src:
            if member.name in (".", "./", ""):
                continue
            name = clean_relative_path(member.name)
            if member.isdir() or member.isfile():
                yield name, member, src
            # links, devices and fifos are not project files: they are left out


def snapshot_for_container(snapshot: Path, *, uid: int, gid: int) -> IO[bytes]:
    """Returns a tar (seeked to 0) of the snapshot's files and folders owned by ``uid:gid``,
    with an ``outputs/`` folder, ready for ``put_archive`` into the working directory."""
    out = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)
    made: set[str] = set()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, member, src in _snapshot_members(snapshot):
            add_parents(tar, posixpath.dirname(name), made, uid=uid, gid=gid)
            if member.isdir():
                if name not in made:
                    add_dir(tar, name, uid=uid, gid=gid)
                    made.add(name)
                continue
            info = tarfile.TarInfo(name)
            info.size = member.size
            info.mode = (member.mode & 0o755) | 0o600
            info.mtime = member.mtime
            info.uid, info.gid = uid, gid
            tar.addfile(info, src.extractfile(member))
        if "outputs" not in made:
            add_dir(tar, "outputs", uid=uid, gid=gid)
    out.seek(0)
    return out


def extract_snapshot(snapshot: Path, dest: Path) -> None:
    """Extracts the snapshot's files and folders into ``dest`` (which must exist) and makes an
    ``outputs/`` folder."""
    for name, member, src in _snapshot_members(snapshot):
        target = dest / name
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with src.extractfile(member) as data, open(target, "wb") as fh:
            while chunk := data.read(1024 * 1024):
                fh.write(chunk)
        target.chmod((member.mode & 0o755) | 0o600)
    (dest / "outputs").mkdir(exist_ok=True)


def repack_outputs(raw: IO[bytes], *, prefix: str, dest: Path) -> Path | None:
    """Writes the regular files of ``raw`` (a tar whose entries start with ``prefix/``) to
    ``dest`` with paths relative to ``prefix``; returns ``dest``, or None (and no file) when
    there is no file to keep."""
    kept = 0
    with tarfile.open(fileobj=raw, mode="r|*") as src, tarfile.open(dest, "w") as out:
        for member in src:
            name = member.name.removeprefix("./")
            if name == prefix or not name.startswith(prefix + "/"):
                continue
            try:
                rel = clean_relative_path(name[len(prefix) + 1:])
            except UnsafePath:
                continue
            if member.isfile():
                info = tarfile.TarInfo(rel)
                info.size = member.size
                info.mode = member.mode & 0o755
                info.mtime = member.mtime
                out.addfile(info, src.extractfile(member))
                kept += 1
    if kept == 0:
        dest.unlink(missing_ok=True)
        return None
    return dest


def tar_directory(root: Path, dest: Path) -> Path | None:
    """Writes the regular files under ``root`` to ``dest`` with relative paths (symlinks left
    out); returns ``dest``, or None (and no file) when ``root`` is missing or has no file."""
    if not root.is_dir() or root.is_symlink():
        return None
    files = []
    for folder, dirs, names in os.walk(root):  # does not descend into symlinked folders
        dirs.sort()
        files.extend(Path(folder) / n for n in sorted(names)
                     if (Path(folder) / n).is_file() and not (Path(folder) / n).is_symlink())
    if not files:
        return None
    with tarfile.open(dest, "w") as out:
        for path in files:
            out.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return dest
