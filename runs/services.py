"""The request side of projects, project files and runs: what a view, a viewset or a CLI call does.

User mistakes raise `core.errors` exceptions with a message saying what to change (`runs.checks`),
and store nothing: files are written to storage first (`core.storage`) and their rows created in
one transaction; a failure removes what was written. A submitted run is enqueued when the
transaction commits; what the worker then does is in `runs.worker`, the sweeps in `runs.reconcile`.

Longer than 500 lines on purpose: projects, their files and runs share the storage and snapshot steps
here; params, tags and notes (and runs logged from outside by an MLflow client) are the last part.
"""
from __future__ import annotations

import logging
import tarfile
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import Conflict, NotFound, PortalError
from core.numbering import create_next
from core.paths import clean_path
from core.storage import StoredFile, chunks_of, delete_files, open_file, save_file
from runs import catalog, checks
from runs.checks import (
    CappedReader,
    archive_kind,
    archive_members,
    check_args,
    check_settings,
    check_target,
    max_project_files,
    max_upload_bytes,
)
from runs.models import EXTERNAL_TARGET, NOTE_MAX, Project, ProjectFile, Run, RunOutput, RunParam, RunTag, Target
from workspaces.models import Role, Workspace
from workspaces.services import activity_record, check_name, require_role

logger = logging.getLogger(__name__)

# A text file a person may edit in the browser is at most this big.
EDITABLE_MAX_BYTES = 512 * 1024


def decode_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


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
    values = check_settings(default_target=default_target, time_limit_s=time_limit_s, memory_mb=memory_mb, cpus=cpus,
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
    transaction.on_commit(lambda: delete_files(names))


def _sync_requirements(project: Project) -> None:
    """Copies requirements.txt into project.requirements (empty when the file is gone), checked at
    the door with the manifests' rules (package names and versions only: no pip options such as
    ``--index-url``, no URLs or paths); PortalError naming the line otherwise, which undoes the
    write it is part of."""
    from registry.checks import parse_requirements

    row = project.files.filter(path="requirements.txt").first()
    text = ""
    if row is not None:
        with open_file(row.storage_name) as handle:
            raw = handle.read(256 * 1024 + 1)
        parse_requirements(raw)
        text = decode_text(raw)
    if text != project.requirements:
        project.requirements = text
        project.save(update_fields=["requirements", "updated_at"])


def _write_files(project: Project, files: Iterable[tuple[str, bytes | Path | IO[bytes]]], *, user, replace: bool = False,
                 record=None) -> list[ProjectFile]:
    """Stores files (path, content), then creates or updates their rows in one short transaction
    (with ``record(rows)``, the caller's activity row, in it too). The blobs are written before the
    transaction, so an upload of hundreds of MB holds no database lock.

    Content is bytes, a Path, or a binary file object. With `replace`, files not given are removed.
    Blobs of replaced rows are deleted after commit; on any error the new blobs are deleted.
    """
    written: list[str] = []
    old_blobs: list[str] = []
    rows: list[ProjectFile] = []
    try:
        staged: list[tuple[str, StoredFile]] = []
        for path, content in files:
            path = clean_path(path)
            if isinstance(content, bytes):
                chunks = [content]
            elif isinstance(content, Path):
                chunks = [content.read_bytes()]
            else:
                chunks = chunks_of(content)
            blob = save_file(f"projects/{project.id}/{uuid.uuid4()}", chunks, limit=max_upload_bytes())
            written.append(blob.storage_name)
            staged.append((path, blob))
        with transaction.atomic():
            existing = {f.path: f for f in project.files.all()}
            before = set(existing)
            seen = set()
            for path, blob in staged:
                seen.add(path)
                row = existing.get(path) or ProjectFile(project=project, workspace_id=project.workspace_id, path=path)
                if not row._state.adding:
                    old_blobs.append(row.storage_name)
                row.storage_name, row.size, row.sha256 = blob.storage_name, blob.size, blob.sha256
                row.save()
                existing[path] = row
                rows.append(row)
            if replace:
                gone = [f for p, f in existing.items() if p not in seen]
                old_blobs += [f.storage_name for f in gone]
                ProjectFile.objects.filter(id__in=[f.id for f in gone]).delete()
            if len(seen | before) > max_project_files() and not replace:
                raise PortalError(
                    f"A project holds at most {max_project_files()} files: remove some before adding more.",
                    fields={"file": "Too many files."},
                )
            _sync_requirements(project)
            if record is not None:
                record(rows)
    except BaseException:
        delete_files(written)
        raise
    transaction.on_commit(lambda: delete_files(old_blobs))
    return rows


def project_file_put(*, project: Project, path: str, content: bytes | IO[bytes], user) -> ProjectFile:
    """Writes one file (new or replacing the one at `path`)."""
    require_role(user=user, workspace=project.workspace, role=Role.CONTRIBUTOR)
    path = clean_path(path)
    (row,) = _write_files(project, [(path, content)], user=user, record=lambda rows: activity_record(
        workspace=project.workspace, actor=user, verb="files.uploaded", target=project, detail={"paths": [path], "count": 1}))
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
        transaction.on_commit(lambda: delete_files([name]))


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
    members, archive = archive_members(fileobj, kind)
    try:
        files = [(m.path, CappedReader(m.open(), m.size)) for m in members]
        rows = _write_files(project, files, user=user, replace=replace, record=lambda rows: activity_record(
            workspace=project.workspace, actor=user, verb="files.uploaded", target=project,
            detail={"paths": [r.path for r in rows[:50]], "count": len(rows), "archive": filename[:200], "replace": replace}))
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
    return _write_files(project, [(target, fileobj)], user=user, replace=replace, record=lambda rows: activity_record(
        workspace=project.workspace, actor=user, verb="files.uploaded", target=project,
        detail={"paths": [target], "count": 1, "replace": replace}))


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
        with open_file(row.storage_name) as handle:
            tar.addfile(info, handle)


def _create_run(**fields) -> Run:
    """Creates the Run with its project's next number, under the workspace's lock (core.numbering):
    submits queue in turn; should two still meet, the unique constraint lets one win and the other
    retries; after that a 409 asks to try again (never a 500)."""
    project = fields.pop("project")
    return create_next(Run, workspace_pk=project.workspace_id, field="number", scope={"project": project},
                       what=f"runs of project '{project.name}'", **fields)


def _snapshot_from_project(project: Project, run_id) -> StoredFile:
    with tempfile.TemporaryFile() as tmp:
        with tarfile.open(fileobj=tmp, mode="w") as tar:
            _add_project_files(tar, project.files.order_by("path"))
        tmp.seek(0)
        return save_file(f"runs/{run_id}/snapshot.tar", chunks_of(tmp))


def _snapshot_from_archive(fileobj: IO[bytes], run_id) -> tuple[StoredFile, list[str]]:
    """Re-packs an uploaded snapshot (zip or tar) after checking it like any upload; returns the blob
    and the file paths it holds."""
    head = fileobj.read(512)
    fileobj.seek(0)
    kind = archive_kind("", head) or "tar"
    members, archive = archive_members(fileobj, kind)
    try:
        with tempfile.TemporaryFile() as tmp:
            with tarfile.open(fileobj=tmp, mode="w") as tar:
                for m in members:
                    info = tarfile.TarInfo(m.path)
                    info.size, info.mode = m.size, 0o644
                    tar.addfile(info, CappedReader(m.open(), m.size))
            tmp.seek(0)
            return save_file(f"runs/{run_id}/snapshot.tar", chunks_of(tmp)), [m.path for m in members]
    finally:
        archive.close()


def run_submit(*, project: Project, script: str, args=None, target: str | None = None, user, snapshot: IO[bytes] | None = None) -> Run:
    """Snapshots the project's files (or the given snapshot archive), creates a queued Run and
    enqueues it after commit. Unknown script or target: PortalError naming it."""
    require_role(user=user, workspace=project.workspace, role=Role.CONTRIBUTOR)
    target = check_target(target, project)
    args = check_args(args)
    script_path = clean_path(script or "", field="script")
    run_id = uuid.uuid4()
    if snapshot is not None:
        blob, paths = _snapshot_from_archive(snapshot, run_id)
    else:
        paths = list(project.files.values_list("path", flat=True))
        blob = None
    if script_path not in paths or not script_path.endswith(".py"):
        if blob is not None:
            delete_files([blob.storage_name])
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
        delete_files([blob.storage_name])
        raise
    return run


def run_prepare(*, project: Project, target: str | None = "docker", user) -> Run:
    """Creates a kind=prepare run: its log is the build of the project's environment image."""
    require_role(user=user, workspace=project.workspace, role=Role.CONTRIBUTOR)
    target = check_target(target or Target.DOCKER, project)
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
