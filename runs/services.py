"""Every change to projects, project files and runs goes through these functions.

User mistakes raise `workspaces.errors` exceptions with a message saying what to change, and store
nothing: files are written to storage first and their rows created in one transaction; a failure
removes what was written. The worker-side functions at the end (`run_*` taking a run id) are what
`runs.worker` calls while it executes a run; state changes there are guarded updates.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import secrets
import stat
import tarfile
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone
from pathlib import Path
from typing import IO

from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, connections, transaction
from django.db.models import F, Max
from django.utils import timezone

from runs import catalog
from runs import checks
from runs.models import EXTERNAL_TARGET, NOTE_MAX, Metric, Project, ProjectFile, Run, RunLogChunk, RunMetricSummary, RunOutput, RunParam, RunTag, Target
from workspaces.errors import Conflict, NotFound, PayloadTooLarge, PortalError
from workspaces.models import Role, Workspace
from workspaces.services import activity_record, check_name, require_role

logger = logging.getLogger(__name__)

PATH_MAX = 255
CHUNK = 1024 * 1024
# A text file a person may edit in the browser is at most this big.
EDITABLE_MAX_BYTES = 512 * 1024
ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
# Control characters other than tab are dropped from log lines (they could rewrite a terminal).
# C1 controls too (U+009B is a one-character CSI for some terminals), and the bidi and line
# separator characters that reorder or split what a reader sees.
CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def max_project_files() -> int:
    return getattr(settings, "MLPORTAL_PROJECT_MAX_FILES", 2000)


def max_upload_bytes() -> int:
    return settings.MLPORTAL_MAX_UPLOAD_BYTES


# --- paths and blobs ------------------------------------------------------------------------------

def clean_path(path: str, *, field: str = "path") -> str:
    """Returns `path` as a normalised relative POSIX path or raises PortalError saying what is wrong:
    absolute, `..`, control characters, backslashes, empty, or longer than 255 characters."""
    raw = path if isinstance(path, str) else ""
    problem = None
    if not raw.strip():
        problem = "a file path is needed"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in raw):
        problem = f"file path {raw[:80]!r} contains control characters"
    elif "\\" in raw:
        problem = f"file path {raw[:80]!r} contains a backslash: use '/' between folders"
    elif raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        problem = f"file path {raw[:80]!r} is absolute: give a path relative to the project folder"
    else:
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            problem = f"file path {raw[:80]!r} contains '..': paths must stay inside the project"
        elif not parts:
            problem = f"file path {raw[:80]!r} names no file"
        else:
            raw = "/".join(parts)
            if len(raw) > PATH_MAX:
                problem = f"file path {raw[:80]!r}… is longer than {PATH_MAX} characters"
    if problem:
        raise PortalError(problem[0].upper() + problem[1:] + ".", fields={field: problem})
    return raw


@dataclass
class _Blob:
    storage_name: str
    size: int
    sha256: str


def _save_blob(name: str, chunks: Iterable[bytes], *, limit: int | None = None, what: str = "file") -> _Blob:
    """Streams `chunks` into storage under `name`; raises PayloadTooLarge (nothing kept) past `limit`."""
    digest = hashlib.sha256()
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as tmp:
        for chunk in chunks:
            size += len(chunk)
            if limit is not None and size > limit:
                raise PayloadTooLarge(
                    f"The {what} is over the limit of {limit} bytes: send a smaller one.", fields={"file": "Too large."}
                )
            digest.update(chunk)
            tmp.write(chunk)
        tmp.seek(0)
        stored = default_storage.save(name, File(tmp, name=name.rsplit("/", 1)[-1]))
    return _Blob(stored, size, digest.hexdigest())


def _delete_blobs(names: Iterable[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError as exc:  # a leftover blob wastes space but harms nothing
            logger.warning("could not delete stored file %s: %s", name, exc)


def _read_chunks(fileobj: IO[bytes]) -> Iterator[bytes]:
    while chunk := fileobj.read(CHUNK):
        yield chunk


def open_blob(storage_name: str) -> IO[bytes]:
    return default_storage.open(storage_name, "rb")


def decode_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# --- projects -------------------------------------------------------------------------------------

def _check_settings(*, default_target=None, time_limit_s=None, memory_mb=None, cpus=None, outputs_max_mb=None) -> dict:
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


@transaction.atomic
def project_create(
    *, workspace: Workspace, name: str, user, description: str = "", template: str | None = None
) -> Project:
    """Creates an empty project, or one holding a copy of a template's files."""
    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    name = check_name(name, what="project name")
    chosen = None
    if template:
        chosen = catalog.get_template(template)
        if chosen is None:
            known = ", ".join(t.slug for t in catalog.all_templates()) or "none"
            raise PortalError(f"Unknown template {template!r}: use one of {known}.", fields={"template": "Unknown template."})
    if Project.objects.filter(workspace=workspace, name=name).exists():
        raise Conflict(f"A project named '{name}' exists in '{workspace.name}' already: choose another name.", fields={"name": "Taken."})
    try:
        with transaction.atomic():
            project = Project.objects.create(
                workspace=workspace, name=name, description=(description or (chosen.description if chosen else ""))[:5000],
                template=chosen.slug if chosen else "", created_by=user,
            )
    except IntegrityError:
        raise Conflict(f"A project named '{name}' exists in '{workspace.name}' already: choose another name.") from None
    if chosen is not None:
        files = []
        for rel in chosen.files:
            with open(chosen.file_path(rel), "rb") as handle:
                files.append((rel, handle.read()))
        _write_files(project, files, user=user)
    activity_record(workspace=workspace, actor=user, verb="project.created", target=project,
                    detail={"template": project.template} if project.template else {})
    return project


@transaction.atomic
def project_update_settings(
    *, project: Project, user, description: str | None = None, requirements: str | None = None,
    default_target: str | None = None, time_limit_s=None, memory_mb=None, cpus=None, allow_network: bool | None = None,
    outputs_max_mb=None,
) -> Project:
    """Changes run settings; `requirements` rewrites the project's requirements.txt."""
    require_role(user=user, workspace=project.workspace, role=Role.CONTRIBUTOR)
    values = _check_settings(default_target=default_target, time_limit_s=time_limit_s, memory_mb=memory_mb, cpus=cpus,
                             outputs_max_mb=outputs_max_mb)
    if description is not None:
        values["description"] = description[:5000]
    if allow_network is not None:
        values["allow_network"] = bool(allow_network)
    for key, value in values.items():
        setattr(project, key, value)
    if values:
        project.save(update_fields=[*values.keys(), "updated_at"])
    if requirements is not None:
        text = requirements.replace("\r\n", "\n")
        if text and not text.endswith("\n"):
            text += "\n"
        _write_files(project, [("requirements.txt", text.encode())], user=user)
    activity_record(workspace=project.workspace, actor=user, verb="project.settings_changed", target=project,
                    detail={"fields": sorted([*values.keys(), *(["requirements"] if requirements is not None else [])])})
    return project


@transaction.atomic
def project_delete(*, project: Project, user) -> None:
    require_role(user=user, workspace=project.workspace, role=Role.OWNER)
    if project.runs.filter(status__in=Run.ACTIVE).exists():
        raise Conflict(f"Project '{project.name}' has active runs: cancel them or wait for them to end first.")
    names = list(project.files.values_list("storage_name", flat=True))
    names += [n for n in project.runs.values_list("snapshot", flat=True) if n]
    names += list(RunOutput.objects.filter(run__project=project).values_list("storage_name", flat=True))
    activity_record(workspace=project.workspace, actor=user, verb="project.deleted", target=project)
    project.delete()
    transaction.on_commit(lambda: _delete_blobs(names))


def _sync_requirements(project: Project) -> None:
    """Copies requirements.txt into project.requirements (empty when the file is gone), checked at
    the door with the manifests' rules (package names and versions only: no pip options such as
    ``--index-url``, no URLs or paths); PortalError naming the line otherwise, which undoes the
    write it is part of."""
    from registry.services import parse_requirements

    row = project.files.filter(path="requirements.txt").first()
    text = ""
    if row is not None:
        with open_blob(row.storage_name) as handle:
            raw = handle.read(256 * 1024 + 1)
        parse_requirements(raw)
        text = decode_text(raw)
    if text != project.requirements:
        project.requirements = text
        project.save(update_fields=["requirements", "updated_at"])


def _write_files(project: Project, files: Iterable[tuple[str, bytes | Path | IO[bytes]]], *, user, replace: bool = False) -> list[ProjectFile]:
    """Stores files (path, content) and creates or updates their rows in one transaction.

    Content is bytes, a Path, or a binary file object. With `replace`, files not given are removed.
    Blobs of replaced rows are deleted after commit; on any error the new blobs are deleted.
    """
    written: list[str] = []
    old_blobs: list[str] = []
    rows: list[ProjectFile] = []
    try:
        with transaction.atomic():
            existing = {f.path: f for f in project.files.all()}
            seen = set()
            for path, content in files:
                path = clean_path(path)
                seen.add(path)
                row = existing.get(path) or ProjectFile(project=project, workspace_id=project.workspace_id, path=path)
                suffix = "" if row._state.adding else f"-{secrets.token_hex(4)}"
                if isinstance(content, bytes):
                    chunks = [content]
                elif isinstance(content, Path):
                    chunks = [content.read_bytes()]
                else:
                    chunks = _read_chunks(content)
                blob = _save_blob(f"projects/{project.id}/{row.id}{suffix}", chunks, limit=max_upload_bytes())
                written.append(blob.storage_name)
                if not row._state.adding:
                    old_blobs.append(row.storage_name)
                row.storage_name, row.size, row.sha256 = blob.storage_name, blob.size, blob.sha256
                row.save()
                rows.append(row)
            if replace:
                gone = [f for p, f in existing.items() if p not in seen]
                old_blobs += [f.storage_name for f in gone]
                ProjectFile.objects.filter(id__in=[f.id for f in gone]).delete()
            if len(seen | set(existing)) > max_project_files() and not replace:
                raise PortalError(
                    f"A project holds at most {max_project_files()} files: remove some before adding more.",
                    fields={"file": "Too many files."},
                )
            _sync_requirements(project)
    except BaseException:
        _delete_blobs(written)
        raise
    transaction.on_commit(lambda: _delete_blobs(old_blobs))
    return rows


def project_file_put(*, project: Project, path: str, content: bytes | IO[bytes], user) -> ProjectFile:
    """Writes one file (new or replacing the one at `path`)."""
    require_role(user=user, workspace=project.workspace, role=Role.CONTRIBUTOR)
    path = clean_path(path)
    with transaction.atomic():
        (row,) = _write_files(project, [(path, content)], user=user)
        activity_record(workspace=project.workspace, actor=user, verb="files.uploaded", target=project,
                        detail={"paths": [path], "count": 1})
    return row


def project_file_delete(*, project: Project, path: str, user) -> None:
    require_role(user=user, workspace=project.workspace, role=Role.CONTRIBUTOR)
    path = clean_path(path)
    with transaction.atomic():
        row = project.files.filter(path=path).first()
        if row is None:
            raise NotFound(f"Project '{project.name}' has no file '{path}'.")
        name = row.storage_name
        row.delete()
        _sync_requirements(project)
        activity_record(workspace=project.workspace, actor=user, verb="files.deleted", target=project, detail={"paths": [path]})
        transaction.on_commit(lambda: _delete_blobs([name]))


# --- archives -------------------------------------------------------------------------------------

@dataclass
class _Member:
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


def _archive_members(fileobj: IO[bytes], kind: str) -> tuple[list[_Member], object]:
    """Checks every member of an archive before anything is written and returns the regular files.

    Rejects the whole archive for a path that is absolute or climbs with `..`, a link or device,
    more files than the project cap, or a total size over the upload cap.
    """
    cap_bytes, cap_files = max_upload_bytes(), max_project_files()
    members: list[_Member] = []
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
            members.append(_Member(path, info.file_size, lambda info=info: archive.open(info)))
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
        members.append(_Member(path, info.size, lambda info=info: archive.extractfile(info)))
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


class _CappedReader(io.RawIOBase):
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


def project_files_upload_archive(*, project: Project, fileobj: IO[bytes], filename: str, user, replace: bool = False) -> list[ProjectFile]:
    """Extracts a zip or tar(.gz) into the project; the whole archive is rejected when any member is unsafe."""
    require_role(user=user, workspace=project.workspace, role=Role.CONTRIBUTOR)
    head = fileobj.read(512)
    fileobj.seek(0)
    kind = archive_kind(filename, head)
    if kind is None:
        raise PortalError(
            f"'{filename}' is not a zip, tar or tar.gz archive: upload it without extract=true to store it as one file.",
            fields={"file": "Not an archive."},
        )
    members, archive = _archive_members(fileobj, kind)
    try:
        files = [(m.path, _CappedReader(m.open(), m.size)) for m in members]
        with transaction.atomic():
            rows = _write_files(project, files, user=user, replace=replace)
            activity_record(workspace=project.workspace, actor=user, verb="files.uploaded", target=project,
                            detail={"paths": [r.path for r in rows[:50]], "count": len(rows), "archive": filename[:200], "replace": replace})
    finally:
        archive.close()
    return rows


def project_files_upload(*, project: Project, fileobj: IO[bytes], filename: str, user, path: str | None = None,
                         extract: bool = False, replace: bool = False) -> list[ProjectFile]:
    """The upload endpoint's one entry: an archive to extract, or a single file at `path` (default: its name)."""
    if extract:
        return project_files_upload_archive(project=project, fileobj=fileobj, filename=filename, user=user, replace=replace)
    require_role(user=user, workspace=project.workspace, role=Role.CONTRIBUTOR)
    target = clean_path(path or filename or "", field="path")
    with transaction.atomic():
        rows = _write_files(project, [(target, fileobj)], user=user, replace=replace)
        activity_record(workspace=project.workspace, actor=user, verb="files.uploaded", target=project,
                        detail={"paths": [target], "count": 1, "replace": replace})
    return rows


def project_archive(project: Project, out: IO[bytes]) -> None:
    """Writes all the project's files as a .tar.gz to `out` (for the archive download)."""
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        _add_project_files(tar, project.files.order_by("path"))


def _add_project_files(tar: tarfile.TarFile, rows: Iterable[ProjectFile]) -> None:
    for row in rows:
        info = tarfile.TarInfo(row.path)
        info.size = row.size
        info.mode = 0o644
        info.mtime = int(row.updated_at.timestamp()) if row.updated_at else 0
        with open_blob(row.storage_name) as handle:
            tar.addfile(info, handle)


# --- runs: submit, prepare, cancel ----------------------------------------------------------------

LOCAL_RUNS_OFF = ("Local runs are off in workspace '{workspace}': they run code on the worker's host, so only a portal "
                  "administrator can allow them (MLPORTAL_LOCAL_RUNS=on, then Admin → Workspaces → local runs allowed). "
                  "Use target docker.")


def _check_target(target: str | None, project: Project) -> str:
    target = target or project.default_target
    if target not in Target.values:
        message = f"Unknown compute target {target!r}: use docker or local."
        raise PortalError(message, code="unknown_target", fields={"target": message})
    if target == Target.LOCAL and not project.workspace.local_runs_enabled:
        message = LOCAL_RUNS_OFF.format(workspace=project.workspace.name)
        raise PortalError(message, code="local_runs_off", fields={"target": message})
    return target


def _check_args(args) -> list[str]:
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


def _next_number(project: Project) -> int:
    return (Run.objects.filter(project=project).aggregate(n=Max("number"))["n"] or 0) + 1


def _create_run(**fields) -> Run:
    """Creates the Run with the project's next number. Submits into one project queue on the
    project's row (NO KEY UPDATE: inserts that only point at it are not held up), so each takes the
    next number in turn; should two still meet, the unique constraint lets one win and the other
    retries; after that a 409 asks to try again (never a 500)."""
    project = fields["project"]
    for attempt in range(5):
        try:
            with transaction.atomic():
                list(Project.objects.select_for_update(no_key=True).filter(pk=project.pk).values_list("pk", flat=True))
                return Run.objects.create(number=_next_number(project), **fields)
        except IntegrityError:
            if attempt == 4:
                raise Conflict("Too many runs are being submitted to this project at once: try again.") from None
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _snapshot_from_project(project: Project, run_id) -> _Blob:
    with tempfile.TemporaryFile() as tmp:
        with tarfile.open(fileobj=tmp, mode="w") as tar:
            _add_project_files(tar, project.files.order_by("path"))
        tmp.seek(0)
        return _save_blob(f"runs/{run_id}/snapshot.tar", _read_chunks(tmp))


def _snapshot_from_archive(fileobj: IO[bytes], run_id) -> tuple[_Blob, list[str]]:
    """Re-packs an uploaded snapshot (zip or tar) after checking it like any upload; returns the blob
    and the file paths it holds."""
    head = fileobj.read(512)
    fileobj.seek(0)
    kind = archive_kind("", head) or "tar"
    members, archive = _archive_members(fileobj, kind)
    try:
        with tempfile.TemporaryFile() as tmp:
            with tarfile.open(fileobj=tmp, mode="w") as tar:
                for m in members:
                    info = tarfile.TarInfo(m.path)
                    info.size, info.mode = m.size, 0o644
                    tar.addfile(info, _CappedReader(m.open(), m.size))
            tmp.seek(0)
            return _save_blob(f"runs/{run_id}/snapshot.tar", _read_chunks(tmp)), [m.path for m in members]
    finally:
        archive.close()


def run_submit(*, project: Project, script: str, args=None, target: str | None = None, user, snapshot: IO[bytes] | None = None) -> Run:
    """Snapshots the project's files (or the given snapshot archive), creates a queued Run and
    enqueues it after commit. Unknown script or target: PortalError naming it."""
    require_role(user=user, workspace=project.workspace, role=Role.CONTRIBUTOR)
    target = _check_target(target, project)
    args = _check_args(args)
    script_path = clean_path(script or "", field="script")
    run_id = uuid.uuid4()
    if snapshot is not None:
        blob, paths = _snapshot_from_archive(snapshot, run_id)
    else:
        paths = list(project.files.values_list("path", flat=True))
        blob = None
    if script_path not in paths or not script_path.endswith(".py"):
        if blob is not None:
            _delete_blobs([blob.storage_name])
        scripts = sorted(p for p in paths if p.endswith(".py"))
        choices = ", ".join(scripts[:20]) or "none: upload a .py file first"
        message = f"Unknown script {script!r}: project '{project.name}' has no such Python file. Its scripts: {choices}."
        raise PortalError(message, code="unknown_script", fields={"script": message})
    if blob is None:
        blob = _snapshot_from_project(project, run_id)
    try:
        with transaction.atomic():
            run = _create_run(
                id=run_id, workspace_id=project.workspace_id, project=project, kind=Run.Kind.SCRIPT, script=script_path,
                args=args, target=target, snapshot=blob.storage_name, snapshot_sha256=blob.sha256, created_by=user,
            )
            activity_record(workspace=project.workspace, actor=user, verb="run.submitted", target=run,
                            detail={"script": script_path, "target": target, "number": run.number})
            _enqueue(run)
    except BaseException:
        _delete_blobs([blob.storage_name])
        raise
    return run


def run_prepare(*, project: Project, target: str | None = "docker", user) -> Run:
    """Creates a kind=prepare run: its log is the build of the project's environment image."""
    require_role(user=user, workspace=project.workspace, role=Role.CONTRIBUTOR)
    target = _check_target(target or Target.DOCKER, project)
    if target != Target.DOCKER:
        message = "Prepare builds the Docker environment image: use target docker (local runs make their virtualenv on first use)."
        raise PortalError(message, fields={"target": message})
    with transaction.atomic():
        run = _create_run(workspace_id=project.workspace_id, project=project, kind=Run.Kind.PREPARE, script="",
                          args=[], target=target, created_by=user)
        activity_record(workspace=project.workspace, actor=user, verb="run.prepare_submitted", target=run,
                        detail={"target": target, "number": run.number})
        _enqueue(run)
    return run


def _enqueue(run: Run) -> None:
    from runs.tasks import execute_run

    run_id = str(run.id)
    transaction.on_commit(lambda: execute_run.delay(run_id))


def run_cancel(*, run: Run, user) -> Run:
    """Cancels a queued or active run: the worker sees the status and stops the container.

    A finished run answers Conflict."""
    require_role(user=user, workspace=run.workspace, role=Role.CONTRIBUTOR)
    now = timezone.now()
    changed = Run.objects.filter(id=run.id, status__in=Run.ACTIVE).update(
        status=Run.Status.CANCELED, status_reason=f"canceled by {user.username}", ended_at=now,
    )
    run.refresh_from_db()
    if not changed:
        raise Conflict(f"Run {run} is {run.status} already: only queued, preparing or running runs can be canceled.")
    activity_record(workspace=run.workspace, actor=user, verb="run.canceled", target=run)
    return run


def run_annotate(*, run: Run, user, tags: dict | None = None, delete_tags: Iterable[str] = (), note: str | None = None) -> Run:
    """Sets (and removes) tags and replaces the note of a run, at any time after it (contributor+).

    Every tag is checked before any is written; None leaves the note as it is."""
    require_role(user=user, workspace=run.workspace, role=Role.CONTRIBUTOR)
    items = [checks.check_tag(k, v) for k, v in checks.check_mapping(tags, "tags").items()]
    removed = [str(k) for k in (delete_tags or [])]
    if note is not None:
        note = checks.check_note(note)
    with transaction.atomic():
        _upsert_tags(run.id, run.workspace_id, items)
        if removed:
            RunTag.objects.filter(run_id=run.id, key__in=removed).delete()
        if note is not None:
            Run.objects.filter(id=run.id).update(note=note)
            run.note = note
    activity_record(workspace=run.workspace, actor=user, verb="run.annotated", target=run,
                    detail={"tags": [k for k, _ in items], "removed": removed, "note": note is not None})
    return run


def run_add_params(*, run: Run, params: dict, user=None) -> None:
    """Records params of a run from the API (contributor+ when a user is given). A name logged
    before with another value refuses the whole call (PortalError naming it); nothing is stored then."""
    if user is not None:
        require_role(user=user, workspace=run.workspace, role=Role.CONTRIBUTOR)
    items = [checks.check_param(k, v) for k, v in checks.check_mapping(params, "params").items()]
    with transaction.atomic():
        problems = run_log_params(run_id=run.id, workspace_id=run.workspace_id, params=items)
        if problems:
            transaction.set_rollback(True)
            raise PortalError(problems[0], code="param_changed", fields={"params": problems})


def run_create_external(*, project: Project, user, run_name: str = "", started_at=None,
                        tags: Iterable[tuple[str, str]] = ()) -> Run:
    """A run logged from outside by an MLflow client (target `external`): nothing executes here;
    it is running until the client ends it (contributor+)."""
    require_role(user=user, workspace=project.workspace, role=Role.CONTRIBUTOR)
    items = [checks.check_tag(k, v) for k, v in tags]
    now = timezone.now()
    with transaction.atomic():
        run = _create_run(workspace=project.workspace, project=project, kind=Run.Kind.SCRIPT, script=(run_name or "")[:255],
                          target=EXTERNAL_TARGET, status=Run.Status.RUNNING, created_by=user, started_at=started_at or now,
                          heartbeat_at=now, image="external")
        run_set_tags(run_id=run.id, workspace_id=run.workspace_id, tags=items)
    activity_record(workspace=project.workspace, actor=user, verb="run.logged_externally", target=run)
    return run


def run_update_external(*, run: Run, user, status: str | None = None, ended_at=None, run_name: str | None = None) -> Run:
    """Ends (or renames) a run from the MLflow API; a run that ended keeps its end time."""
    require_role(user=user, workspace=run.workspace, role=Role.CONTRIBUTOR)
    fields: dict = {}
    if run_name:
        fields["script"] = run_name[:255]
    if status:
        fields["status"] = status
        if status in Run.FINISHED:
            fields["ended_at"] = ended_at or timezone.now()
            if run.target == EXTERNAL_TARGET:
                fields["exit_code"] = 0 if status == Run.Status.COMPLETED else 1
        else:
            fields["ended_at"] = None
    if fields:
        Run.objects.filter(id=run.id).update(**fields)
        run.refresh_from_db()
    return run


def _upsert_tags(run_id, workspace_id, items: list[tuple[str, str]]) -> None:
    if not items:
        return
    rows = {key: RunTag(run_id=run_id, workspace_id=workspace_id, key=key, value=value) for key, value in items}
    RunTag.objects.bulk_create(list(rows.values()), update_conflicts=True, unique_fields=["run", "key"],
                               update_fields=["value"])


# --- worker side ----------------------------------------------------------------------------------

def run_log_params(*, run_id, workspace_id, params: Iterable[tuple[str, str]]) -> list[str]:
    """Stores params ((name, value) already checked) and returns a message for each one refused:
    a name this run logged before with another value (MLflow's rule; the same value again is fine)."""
    wanted: dict[str, str] = {}
    problems = []
    for name, value in params:
        if name in wanted and wanted[name] != value:
            problems.append(_param_changed(name, wanted[name], value))
            continue
        wanted[name] = value
    if not wanted:
        return problems
    with transaction.atomic():
        known = dict(RunParam.objects.filter(run_id=run_id, name__in=list(wanted)).values_list("name", "value"))
        new = []
        for name, value in wanted.items():
            if name in known:
                if known[name] != value:
                    problems.append(_param_changed(name, known[name], value))
            else:
                new.append(RunParam(run_id=run_id, workspace_id=workspace_id, name=name, value=value))
        RunParam.objects.bulk_create(new, ignore_conflicts=True)
    return problems


def _param_changed(name: str, old: str, new: str) -> str:
    return (f"Param {name!r} was already logged in this run with value {old[:80]!r}; a run's params cannot change "
            f"(got {new[:80]!r}). Log the new value under another name.")


NOTE_TAG = "mlflow.note.content"  # MLflow keeps a run's description as this tag; here it is the note


def run_set_tags(*, run_id, workspace_id, tags: Iterable[tuple[str, str]]) -> None:
    """Sets tags ((key, value) already checked); a later value of a key replaces the earlier.
    MLflow's note tag (mlflow.note.content) becomes the run's note."""
    items = list(tags)
    notes = [value for key, value in items if key == NOTE_TAG]
    _upsert_tags(run_id, workspace_id, [(k, v) for k, v in items if k != NOTE_TAG])
    if notes:
        Run.objects.filter(id=run_id).update(note=notes[-1][:NOTE_MAX])


def run_claim(*, run_id, worker: str) -> Run | None:
    """Moves a queued run to preparing; None when it is not queued (a duplicate delivery, a cancel)."""
    now = timezone.now()
    claimed = Run.objects.filter(id=run_id, status=Run.Status.QUEUED).update(
        status=Run.Status.PREPARING, started_at=now, heartbeat_at=now, worker=worker[:255],
    )
    if not claimed:
        return None
    return Run.objects.select_related("project", "workspace").get(id=run_id)


def run_mark_running(*, run_id, image: str) -> bool:
    return bool(Run.objects.filter(id=run_id, status=Run.Status.PREPARING).update(
        status=Run.Status.RUNNING, image=image[:255], heartbeat_at=timezone.now(),
    ))


def run_heartbeat(*, run_id) -> str | None:
    """Stamps the heartbeat of an active run and returns its status (None when it is gone)."""
    Run.objects.filter(id=run_id, status__in=[Run.Status.PREPARING, Run.Status.RUNNING]).update(heartbeat_at=timezone.now())
    return Run.objects.filter(id=run_id).values_list("status", flat=True).first()


def run_set_container(*, run_id, container_id: str) -> None:
    Run.objects.filter(id=run_id).update(container_id=container_id[:80])


def clean_log_line(line: str | bytes) -> str:
    """A log line safe to show: UTF-8 (bad bytes replaced), no ANSI escapes or control characters."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    return CONTROL_RE.sub("", ANSI_RE.sub("", line))


def run_append_log(*, run_id, workspace_id, lines: list[str]) -> None:
    """Appends lines to the run's log as one chunk, up to MLPORTAL_LOG_MAX_BYTES; past it, one
    visible "[log truncated…]" note is written and later lines are dropped."""
    if not lines:
        return
    cap = settings.MLPORTAL_LOG_MAX_BYTES
    with transaction.atomic():
        row = Run.objects.filter(id=run_id).values("log_bytes", "log_truncated").first()
        if row is None or row["log_truncated"]:
            return
        used = row["log_bytes"]
        kept: list[str] = []
        truncated = False
        for line in lines:
            text = clean_log_line(line) + "\n"
            size = len(text.encode())
            if used + size > cap:
                truncated = True
                break
            kept.append(text)
            used += size
        if truncated:
            kept.append(f"[log truncated: the log reached its limit of {cap} bytes; later lines were dropped]\n")
        if not kept:
            return
        seq = (RunLogChunk.objects.filter(run_id=run_id).aggregate(n=Max("seq"))["n"] or 0) + 1
        RunLogChunk.objects.create(run_id=run_id, workspace_id=workspace_id, seq=seq, text="".join(kept))
        Run.objects.filter(id=run_id).update(log_bytes=used, log_truncated=truncated)


def run_record_metrics(*, run_id, workspace_id, points: list[dict]) -> None:
    """Stores parsed metric points ({"name", "value", "step", "time"}) and updates each name's last value.

    A float NaN is kept as MLflow keeps it (no number, the text "NaN"); on PostgreSQL the points go
    in with COPY, which writes a batch of 20,000 rows several times faster than INSERT."""
    if not points:
        return
    now = timezone.now()
    rows = []
    for p in points:
        value, text = p.get("value"), ""
        if isinstance(value, str):
            value, text = None, value[:1000]
        elif value is not None:
            value = float(value)
            if value != value:  # NaN
                value, text = None, "NaN"
        when = p.get("time")
        logged_at = datetime.fromtimestamp(when, tz=dt_timezone.utc) if isinstance(when, (int, float)) else now
        rows.append((str(p["name"])[:200], value, text, p.get("step"), logged_at))
    last: dict[str, tuple] = {}
    counts: dict[str, int] = {}
    for row in rows:
        last[row[0]] = row
        counts[row[0]] = counts.get(row[0], 0) + 1
    with transaction.atomic():
        _insert_metrics(run_id, workspace_id, rows)
        items = [(*last[name], counts[name]) for name in last]
        for start in range(0, len(items), 500):  # 9 parameters a row: stay far below SQLite's limit
            _upsert_summaries(run_id, workspace_id, items[start:start + 500])


def _upsert_summaries(run_id, workspace_id, items: list[tuple]) -> None:
    """One INSERT … ON CONFLICT for the (name, value, text, step, logged_at, count) of each name:
    the last value replaces the summary's, the count adds up (PostgreSQL and SQLite both speak it)."""
    connection = connections[RunMetricSummary.objects.db]
    table = connection.ops.quote_name(RunMetricSummary._meta.db_table)
    run_value = uuid.UUID(str(run_id)) if connection.vendor == "postgresql" else uuid.UUID(str(run_id)).hex
    workspace_value = uuid.UUID(str(workspace_id)) if connection.vendor == "postgresql" else uuid.UUID(str(workspace_id)).hex
    adapt = connection.ops.adapt_datetimefield_value
    params: list = []
    for name, value, text, step, logged_at, count in items:
        params += [workspace_value, run_value, name, value, text, step, count, adapt(logged_at), 0]
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(items))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (workspace_id, run_id, name, value, text, step, count, logged_at, chart_count) "
            f"VALUES {values} ON CONFLICT (run_id, name) DO UPDATE SET value = EXCLUDED.value, text = EXCLUDED.text, "
            f"step = EXCLUDED.step, logged_at = EXCLUDED.logged_at, count = {table}.count + EXCLUDED.count", params)


def _insert_metrics(run_id, workspace_id, rows: list[tuple]) -> None:
    """Inserts (name, value, text, step, logged_at) rows of one run: COPY on PostgreSQL, else bulk_create."""
    connection = connections[Metric.objects.db]
    if connection.vendor != "postgresql":
        Metric.objects.bulk_create([Metric(run_id=run_id, workspace_id=workspace_id, name=n, value=v, text=t, step=s,
                                           logged_at=at) for n, v, t, s, at in rows], batch_size=2000)
        return
    run_id, workspace_id = uuid.UUID(str(run_id)), uuid.UUID(str(workspace_id))
    connection.ensure_connection()
    table = connection.ops.quote_name(Metric._meta.db_table)
    with connection.connection.cursor() as cursor:
        with cursor.copy(f"COPY {table} (run_id, workspace_id, name, value, text, step, logged_at) FROM STDIN") as copy:
            for n, v, t, s, at in rows:
                copy.write_row((run_id, workspace_id, n, v, t, s, at))


def run_store_outputs(*, run: Run, tar_path: Path | None) -> list[RunOutput]:
    """Stores each regular file of the outputs tar (paths relative to outputs/) as a RunOutput."""
    if tar_path is None or not Path(tar_path).exists():
        return []
    written, rows = [], []
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                try:
                    path = clean_path(info.name)
                except PortalError:
                    logger.warning("run %s: skipped output with unsafe path %r", run.id, info.name)
                    continue
                output = RunOutput(run=run, workspace_id=run.workspace_id, path=path)
                blob = _save_blob(f"runs/{run.id}/outputs/{output.id}", _read_chunks(tar.extractfile(info)))
                written.append(blob.storage_name)
                output.storage_name, output.size, output.sha256 = blob.storage_name, blob.size, blob.sha256
                rows.append(output)
        with transaction.atomic():
            RunOutput.objects.filter(run=run).delete()
            RunOutput.objects.bulk_create(rows)
    except BaseException:
        _delete_blobs(written)
        raise
    return rows


def run_finish(*, run_id, status: str, reason: str = "", exit_code: int | None = None, oom: bool = False, image: str | None = None) -> str:
    """Records the end of a run and returns its final status.

    The update is guarded on the active states; a run canceled meanwhile keeps `canceled` (its exit
    code and end time are still filled in), a run swept to `lost` stays lost."""
    now = timezone.now()
    fields = {"exit_code": exit_code, "oom": oom, "heartbeat_at": now}
    if image:
        fields["image"] = image[:255]
    done = Run.objects.filter(id=run_id, status__in=[Run.Status.PREPARING, Run.Status.RUNNING]).update(
        status=status, status_reason=reason[:2000], ended_at=now, **fields
    )
    if not done:
        Run.objects.filter(id=run_id, status=Run.Status.CANCELED).update(**fields)
    current = Run.objects.filter(id=run_id).values_list("status", flat=True).first()
    return current or status


def run_mark_lost(*, run_id, reason: str) -> bool:
    return bool(Run.objects.filter(id=run_id, status__in=[Run.Status.PREPARING, Run.Status.RUNNING]).update(
        status=Run.Status.LOST, status_reason=reason[:2000], ended_at=timezone.now(),
    ))
