"""The project folder on the user's disk: which files make a run's snapshot (`.mlportalignore`,
gitignore-style), packing them for upload, and unpacking a project archive safely.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable

from mlportal_cli.client import CliError
from mlportal_cli.config import LINK_DIR

IGNORE_FILE = ".mlportalignore"
# Never part of a snapshot: the link, version control, bytecode, and what runs write (outputs come
# back from the portal with each run; uploading them would feed one run's results into the next).
ALWAYS_IGNORED = (LINK_DIR, ".git", "__pycache__", "outputs")


@dataclass
class _Rule:
    regex: re.Pattern
    negate: bool
    dir_only: bool
    anchored: bool


def _glob_to_regex(pattern: str) -> str:
    """gitignore globbing: `*` and `?` stay inside one path segment, `**` spans segments,
    `[abc]` / `[!abc]` are character classes."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("(?:/.*)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


class IgnoreRules:
    """The patterns of a `.mlportalignore`, with git's meaning: blank lines and `#` comments are
    skipped; `!` re-includes; a trailing `/` matches folders only; a pattern with a `/` (other than
    a trailing one) is relative to the project root, one without matches a name at any depth; the
    last matching pattern decides. A file inside an ignored folder is ignored."""

    def __init__(self, text: str = ""):
        self.rules: list[_Rule] = []
        for raw in text.splitlines():
            line = raw.rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:]
            if line.startswith("\\"):  # "\#name" / "\!name": a literal first character
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.strip("/") if dir_only else line
            anchored = "/" in line.rstrip("/")
            line = line.lstrip("/")
            if not line:
                continue
            self.rules.append(_Rule(re.compile(f"^{_glob_to_regex(line)}$"), negate, dir_only, anchored))

    def ignored(self, relpath: str, *, is_dir: bool) -> bool:
        name = relpath.rsplit("/", 1)[-1]
        if is_dir and name in ALWAYS_IGNORED:
            return True
        decision = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            subject = relpath if rule.anchored else name
            if rule.regex.match(subject):
                decision = not rule.negate
        return decision


def project_files(root: Path, *, warn: Callable[[str], None] = lambda message: None) -> list[tuple[str, Path]]:
    """The folder's files that make a snapshot, as (relative posix path, path), sorted. Symbolic
    links are left out (the portal refuses them in archives), with a warning."""
    root = root.resolve()
    ignore_file = root / IGNORE_FILE
    rules = IgnoreRules(ignore_file.read_text(encoding="utf-8", errors="replace") if ignore_file.is_file() else "")
    found: list[tuple[str, Path]] = []
    for folder, dirnames, filenames in os.walk(root):
        base = Path(folder)
        rel_base = base.relative_to(root).as_posix()
        prefix = "" if rel_base == "." else rel_base + "/"
        keep = []
        for name in sorted(dirnames):
            path = base / name
            if path.is_symlink():
                warn(f"skipped {prefix}{name}/: a symbolic link")
            elif not rules.ignored(prefix + name, is_dir=True):
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = base / name
            rel = prefix + name
            if rules.ignored(rel, is_dir=False):
                continue
            if path.is_symlink():
                warn(f"skipped {rel}: a symbolic link")
                continue
            if path.is_file():
                found.append((rel, path))
    return sorted(found)


def pack(files: list[tuple[str, Path]], dest: IO[bytes]) -> int:
    """Writes `files` as a .tar.gz to `dest`; returns the total size of their contents."""
    total = 0
    with tarfile.open(fileobj=dest, mode="w:gz") as tar:
        for rel, path in files:
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
            total += info.size
    return total


def _safe_member_path(name: str) -> PurePosixPath | None:
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts) or not path.parts:
        return None
    if path.parts[0] == LINK_DIR:
        return None
    return path


def extract(archive: IO[bytes], root: Path) -> list[str]:
    """Writes the regular files of a project .tar.gz under `root` (overwriting files of the same
    name); returns their paths. Members that would land outside `root`, in `.mlportal/`, or that
    are not plain files or folders, raise CliError before anything is written."""
    with tarfile.open(fileobj=archive, mode="r:*") as tar:
        members = tar.getmembers()
        for member in members:
            if not (member.isfile() or member.isdir()) or _safe_member_path(member.name.rstrip("/")) is None:
                raise CliError(f"the project archive holds an unsafe entry {member.name!r}: nothing was written")
        written = []
        for member in members:
            if not member.isfile():
                continue
            rel = _safe_member_path(member.name)
            target = root.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member) or io.BytesIO()
            with open(target, "wb") as handle:
                while chunk := source.read(1024 * 1024):
                    handle.write(chunk)
            os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
            written.append(rel.as_posix())
    return written


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
