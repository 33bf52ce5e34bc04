"""Checks on what users send for projects and runs: run settings, targets, arguments, the archives
they upload (every member checked before anything is written), and params, tags and notes (shared
by runtime lines, the portal's API and pages, the MLflow API). Each returns the cleaned value or
raises PortalError saying what to change, with the field at fault. No database writes. Paths are
cleaned by core.paths.clean_path."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings

from core.errors import PayloadTooLarge, PortalError
from core.paths import clean_path
from mlportal_runtime.logger import check_param as _runtime_check_param
from mlportal_runtime.logger import check_tag as _runtime_check_tag
from runs.models import NOTE_MAX, Project, Target

CHUNK = 1024 * 1024


def max_project_files() -> int:
    return getattr(settings, "MLPORTAL_PROJECT_MAX_FILES", 2000)


def max_upload_bytes() -> int:
    return settings.MLPORTAL_MAX_UPLOAD_BYTES


def check_settings(*, default_target=None, time_limit_s=None, memory_mb=None, cpus=None, outputs_max_mb=None) -> dict:
    """Returns the given run settings checked and typed; raises PortalError naming the bad one."""
    out = {}
    if default_target is not None:
        if default_target not in Target.values:
            raise PortalError(f"Unknown target {default_target!r}: use docker or local.", fields={"default_target": "Unknown target."})
        out["default_target"] = default_target
    limits = {
        "time_limit_s": (time_limit_s, int, 1, settings.MLPORTAL_RUN_TIMEOUT_MAX, "seconds"),
        "memory_mb": (memory_mb, int, 16, settings.MLPORTAL_RUN_MAX_MEMORY_MB,
                      "MiB (the portal's maximum, MLPORTAL_RUN_MAX_MEMORY_MB)"),
        "cpus": (cpus, float, 0.01, settings.MLPORTAL_RUN_MAX_CPUS, "CPUs (the portal's maximum, MLPORTAL_RUN_MAX_CPUS)"),
        "outputs_max_mb": (outputs_max_mb, int, 1, settings.MLPORTAL_RUN_OUTPUTS_MAX_MB, "MiB (the portal's maximum)"),
    }
    for name, (value, kind, low, high, unit) in limits.items():
        if value is None:
            continue
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise PortalError(f"{name} must be a number, not {str(value)[:40]!r}.", fields={name: "Not a number."}) from None
        if number != number or number in (float("inf"), float("-inf")):
            raise PortalError(f"{name} must be a finite number.", fields={name: "Not a finite number."})
        if not low <= number <= high:
            message = f"{name} must be between {low} and {high} {unit}; {number} is not."
            raise PortalError(message, fields={name: message})
        out[name] = number
    return out


LOCAL_RUNS_OFF = ("Local runs are off in workspace '{workspace}': they run code on the worker's host, so only a portal "
                  "administrator can allow them (MLPORTAL_LOCAL_RUNS=on, then Admin → Workspaces → local runs allowed). "
                  "Use target docker.")


def check_target(target: str | None, project: Project) -> str:
    target = target or project.default_target
    if target not in Target.values:
        message = f"Unknown compute target {target!r}: use docker or local."
        raise PortalError(message, code="unknown_target", fields={"target": message})
    if target == Target.LOCAL and not project.workspace.local_runs_enabled:
        message = LOCAL_RUNS_OFF.format(workspace=project.workspace.name)
        raise PortalError(message, code="local_runs_off", fields={"target": message})
    return target


def check_args(args) -> list[str]:
    if args is None:
        return []
    if isinstance(args, str):
        raise PortalError("args must be a list of strings, e.g. [\"--alpha\", \"0.5\"].", fields={"args": "Not a list."})
    if not isinstance(args, (list, tuple)) or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in args):
        raise PortalError("args must be a list of strings, e.g. [\"--alpha\", \"0.5\"].", fields={"args": "Not a list of strings."})
    args = [str(a) for a in args]
    if len(args) > 200 or sum(len(a) for a in args) > 32_000 or any("\x00" in a for a in args):
        raise PortalError("args are too many or too long (at most 200 arguments, 32,000 characters).", fields={"args": "Too long."})
    return args


@dataclass
class ArchiveMember:
    path: str
    size: int
    open: callable


def archive_kind(filename: str, head: bytes) -> str | None:
    """Returns "zip" or "tar" for an archive (by content, the name only breaks ties), else None."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b") or (len(head) > 262 and head[257:262] == b"ustar"):
        return "tar"
    lowered = (filename or "").lower()
    if lowered.endswith(".zip"):
        return "zip"
    if lowered.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    return None


def _reject(message: str) -> PortalError:
    return PortalError(f"The archive was not used: {message}. Nothing was written.", code="unsafe_archive", fields={"file": message})


def archive_members(fileobj: IO[bytes], kind: str) -> tuple[list[ArchiveMember], object]:
    """Checks every member of an archive before anything is written and returns the regular files.

    Rejects the whole archive for a path that is absolute or climbs with `..`, a link or device,
    more files than the project cap, or a total size over the upload cap.
    """
    cap_bytes, cap_files = max_upload_bytes(), max_project_files()
    members: list[ArchiveMember] = []
    total = 0
    if kind == "zip":
        try:
            archive = zipfile.ZipFile(fileobj)
            infos = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise _reject(f"it is not a readable zip file ({exc})") from None
        for info in infos:
            # Unix zips keep the file type in the high bits; zips from elsewhere leave them 0.
            kind_bits = stat.S_IFMT(info.external_attr >> 16)
            if kind_bits == stat.S_IFLNK:
                raise _reject(f"member {info.filename!r} is a symbolic link")
            if kind_bits and kind_bits not in (stat.S_IFREG, stat.S_IFDIR):
                raise _reject(f"member {info.filename!r} is not a regular file")
            if info.is_dir():
                continue
            path = _archive_path(info.filename)
            total += info.file_size
            members.append(ArchiveMember(path, info.file_size, lambda info=info: archive.open(info)))
            _check_caps(len(members), total, cap_files, cap_bytes)
        return members, archive
    try:
        archive = tarfile.open(fileobj=fileobj, mode="r:*")
        infos = archive.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _reject(f"it is not a readable tar or tar.gz file ({exc})") from None
    for info in infos:
        if info.issym() or info.islnk():
            raise _reject(f"member {info.name!r} is a link")
        if info.isdir():
            continue
        if not info.isfile():
            raise _reject(f"member {info.name!r} is a device, FIFO or other special file")
        path = _archive_path(info.name)
        total += info.size
        members.append(ArchiveMember(path, info.size, lambda info=info: archive.extractfile(info)))
        _check_caps(len(members), total, cap_files, cap_bytes)
    return members, archive


def _archive_path(name: str) -> str:
    try:
        return clean_path(name)
    except PortalError as exc:
        raise _reject(f"member {name[:80]!r} has an unsafe path ({exc.fields.get('path', [exc.message])[0]})") from None


def _check_caps(count: int, total: int, cap_files: int, cap_bytes: int) -> None:
    if count > cap_files:
        raise _reject(f"it holds more than {cap_files} files")
    if total > cap_bytes:
        raise PayloadTooLarge(
            f"The archive was not used: its files add up to more than {cap_bytes} bytes. Nothing was written.",
            fields={"file": "Too large."},
        )


class CappedReader(io.RawIOBase):
    """Reads a member but refuses to go past its declared size (a lying zip header)."""

    def __init__(self, raw, limit: int):
        self.raw, self.left = raw, limit

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(CHUNK if n is None or n < 0 else n)
        self.left -= len(data)
        if self.left < 0:
            raise _reject("a member holds more data than its header declares")
        return data


def check_param(name: Any, value: Any) -> tuple[str, str]:
    """(name, value as text) of a param: name 1-250 characters, value at most 6,000 (MLflow's limits)."""
    try:
        return _runtime_check_param(name, "" if value is None else value)
    except ValueError as exc:
        raise PortalError(_sentence(exc), code="invalid_param", fields={"params": _sentence(exc)}) from None


def check_tag(key: Any, value: Any) -> tuple[str, str]:
    """(key, value as text) of a tag: key 1-250 characters, value at most 8,000 (MLflow's limits)."""
    try:
        return _runtime_check_tag(key, "" if value is None else value)
    except ValueError as exc:
        raise PortalError(_sentence(exc), code="invalid_tag", fields={"tags": _sentence(exc)}) from None


def check_note(note: Any) -> str:
    if note is None:
        return ""
    if not isinstance(note, str):
        raise PortalError("The note must be text.", fields={"note": "Write the note as text."})
    if len(note) > NOTE_MAX:
        raise PortalError(f"The note is {len(note)} characters; the limit is {NOTE_MAX}.",
                          fields={"note": f"At most {NOTE_MAX} characters."})
    return note


def check_mapping(data: Any, field: str) -> dict:
    """A JSON object of name → scalar (what `params` and `tags` are sent as)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PortalError(f"{field} must be an object of name → value, e.g. {{\"max_depth\": 4}}.",
                          fields={field: "Send an object of name → value."})
    for name, value in data.items():
        if isinstance(value, (dict, list)):
            raise PortalError(f"The value of {field[:-1]} {str(name)[:80]!r} must be a number or text, not a {type(value).__name__}.",
                              fields={field: "Values are numbers or text."})
    return data


def _sentence(exc: Exception) -> str:
    text = str(exc)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
