"""The request side of models, manifests and images: what a view, a viewset or a CLI call does.

Each function checks (``registry.checks``), stores files before its transaction, records rows and
enqueues the build when the transaction commits. The portal never loads a model file: files are
copied, hashed and handed to Docker, never unpickled. What the ``builds`` worker does is in
``registry.worker``; the requirement inference it uses is the pure ``registry.inference``.
"""
from __future__ import annotations

import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings
from django.db import transaction

from core.errors import Conflict, PortalError
from core.numbering import create_next
from core.storage import delete_files, delete_files_on_commit, open_file, read_file, save_file
from registry import model_scan, selectors
from registry.checks import (
    check_description,
    check_framework,
    check_model_name,
    check_models,
    check_resource_name,
    check_schema,
    check_score,
    check_tags,
    parse_requirements,
)
from registry.models import Image, Manifest, ManifestModel, Model
from workspaces.models import Role, Workspace
from workspaces.services import activity_record, require_role

logger = logging.getLogger(__name__)


def _create_versioned(cls, *, workspace: Workspace, name: str, **fields):
    """Creates ``cls`` as the next version of ``name`` in ``workspace`` (core.numbering)."""
    return create_next(cls, workspace_pk=workspace.pk, field="version", scope={"workspace": workspace, "name": name},
                       what=f"versions of '{name}'", **fields)


def _store_upload(fileobj: IO[bytes], *, storage_name: str, what: str, field: str) -> tuple[str, int, str]:
    """Streams ``fileobj`` into storage; returns (storage name, size, sha256). An empty or over-cap
    upload is refused before anything is kept."""
    stored = save_file(storage_name, fileobj, limit=settings.MLPORTAL_MAX_UPLOAD_BYTES, what=what, field=field,
                       allow_empty=False)
    return stored.storage_name, stored.size, stored.sha256


@dataclass(frozen=True)
class StagedModel:
    """A model file stored and scanned before any transaction (``model_stage_upload``): what
    ``model_register_staged`` makes a version of. Until then its file is the caller's to delete."""

    file_name: str
    storage_name: str
    size: int
    sha256: str
    scan: dict
    framework: str


def _stage(*, workspace: Workspace, file_name: str, framework: Any, store) -> StagedModel:
    """Stores the file with ``store(storage_name) -> (name, size, sha256)`` and scans it (opcodes
    only, never loaded). No row is written; on any error the stored file is removed."""
    framework = check_framework(framework, file_name)
    stored, size, sha256 = store(f"models/{workspace.id}/{uuid.uuid4().hex}/{file_name}")
    try:
        scan = model_scan.scan_fields(model_scan.scan_stored(stored, file_name), declared_framework=framework)
    except BaseException:
        delete_files([stored])
        raise
    framework = scan.pop("framework")
    return StagedModel(file_name=file_name, storage_name=stored, size=size, sha256=sha256, scan=scan, framework=framework)


def _record(*, workspace: Workspace, name: str, user, staged: StagedModel, description: str, tags: dict,
            run=None, source_path: str = "") -> Model:
    """The next version of ``name`` for a staged file: row writes only, in one short transaction."""
    with transaction.atomic():
        lineage = {}
        if run is not None:
            lineage = {"run": run, "project": run.project}
        model = _create_versioned(
            Model, workspace=workspace, name=name, description=description, tags=tags, framework=staged.framework,
            file_name=staged.file_name, file=staged.storage_name, size=staged.size, sha256=staged.sha256,
            source_path=source_path, created_by=user, **lineage, **staged.scan,
        )
        detail = {"size": staged.size, "sha256": staged.sha256, "scan": model.scan_verdict}
        if run is not None:
            detail["run"] = str(run.pk)
        activity_record(workspace=workspace, actor=user, verb="model.registered", target=model, detail=detail)
        model_scan.carry_acceptance(model, user=user)
    return model


def _register(*, workspace: Workspace, name: str, user, file_name: str, description: Any, tags: Any,
              framework: Any, store, run=None, source_path: str = "") -> Model:
    """Checks everything, stores and scans the file (before the transaction: an upload of
    hundreds of MB holds no lock), then creates the next version; the stored file is removed
    again when the row is not made."""
    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    name = check_model_name(name)
    description = check_description(description)
    tags = check_tags(tags)
    staged = _stage(workspace=workspace, file_name=file_name, framework=framework, store=store)
    try:
        return _record(workspace=workspace, name=name, user=user, staged=staged, description=description, tags=tags,
                       run=run, source_path=source_path)
    except BaseException:
        delete_files([staged.storage_name])
        raise


def model_stage_upload(*, workspace: Workspace, fileobj: IO[bytes], filename: str, user, framework: str = "") -> StagedModel:
    """Stores and scans an uploaded model file without registering it (a caller that makes the
    version inside its own transaction, like the one-shot service create, stages it first)."""
    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    file_name = check_model_name(filename or "", field="file", what="file name")
    return _stage(workspace=workspace, file_name=file_name, framework=framework,
                  store=lambda storage_name: _store_upload(fileobj, storage_name=storage_name, what="model file", field="file"))


def model_register_staged(*, workspace: Workspace, name: str, staged: StagedModel, user, description: str = "",
                          tags: dict | None = None) -> Model:
    """Makes the next version of ``name`` from a staged file (row writes only). The staged file
    stays the caller's to delete when this raises."""
    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    return _record(workspace=workspace, name=check_model_name(name), user=user, staged=staged,
                   description=check_description(description), tags=check_tags(tags))


def model_register_upload(*, workspace: Workspace, name: str, fileobj: IO[bytes], filename: str, user,
                          description: str = "", tags: dict | None = None, framework: str = "") -> Model:
    """Registers an uploaded file as the next version of model ``name``; returns it.

    The file is streamed to storage with its sha256 computed on the way; it is registered under
    ``filename`` (its base name), which is how score.py finds it in an image. Raises PortalError
    for a bad name, file name, tags or framework, or an empty file; PayloadTooLarge over the cap."""
    file_name = check_model_name(filename or "", field="file", what="file name")
    return _register(
        workspace=workspace, name=name, user=user, file_name=file_name, description=description, tags=tags,
        framework=framework,
        store=lambda storage_name: _store_upload(fileobj, storage_name=storage_name, what="model file", field="file"),
    )


def run_output(*, run, path: str):
    """Returns the output of ``run`` at ``path`` (relative to outputs/; a leading ``outputs/`` is
    accepted too). Raises PortalError naming the path, and the outputs there are, when it has none."""
    path = (path or "").strip()
    if not path:
        raise PortalError("Name the run output to register, like 'model.pkl'.", fields={"path": "This field is required."})
    outputs = run.outputs.all()
    output = outputs.filter(path=path).first()
    if output is None and path.startswith("outputs/"):
        output = outputs.filter(path=path[len("outputs/"):]).first()
    if output is None:
        known = list(outputs.values_list("path", flat=True)[:10])
        listing = f"its outputs are {', '.join(known)}" if known else "it has no outputs"
        message = f"Run {run} has no output {path[:120]!r}; {listing}."
        raise PortalError(message, fields={"path": message})
    return output


def _copy_stored(source: str, expected_sha256: str, *, storage_name: str) -> tuple[str, int, str]:
    """Copies a stored file (a run's output) to ``storage_name``, checking its sha256 on the way."""
    with open_file(source) as handle:
        stored, size, sha256 = _store_upload(handle, storage_name=storage_name, what="run output", field="path")
    if expected_sha256 and sha256 != expected_sha256:
        delete_files([stored])
        raise Conflict("The run output's stored bytes no longer match its checksum; it cannot be registered.")
    return stored, size, sha256


def model_register_from_run(*, run, path: str, name: str, user, description: str = "", tags: dict | None = None,
                            framework: str = "") -> Model:
    """Registers a run's output file (e.g. ``model.pkl`` under outputs/) as the next version of model
    ``name``, with lineage to the run and its project. The file is copied, so the model outlives the
    run. Raises PortalError for an unknown output or any bad field."""
    output = run_output(run=run, path=path)
    file_name = check_model_name(output.path.rsplit("/", 1)[-1], field="path", what="file name")
    return _register(
        workspace=run.workspace, name=name, user=user, file_name=file_name, description=description, tags=tags,
        framework=framework, run=run, source_path=output.path,
        store=lambda storage_name: _copy_stored(output.storage_name, output.sha256, storage_name=storage_name),
    )


def model_update(*, model: Model, user, description: str | None = None, tags: dict | None = None) -> Model:
    """Changes a model version's description and/or tags (the file never changes)."""
    require_role(user=user, workspace=model.workspace, role=Role.CONTRIBUTOR)
    changed = []
    if description is not None:
        model.description = check_description(description)
        changed.append("description")
    if tags is not None:
        model.tags = check_tags(tags)
        changed.append("tags")
    if changed:
        model.save(update_fields=changed)
        activity_record(workspace=model.workspace, actor=user, verb="model.updated", target=model, detail={"fields": changed})
    return model


@transaction.atomic
def model_delete(*, model: Model, user) -> None:
    """Deletes a model version and its file. Raises Conflict naming the manifests that use it."""
    require_role(user=user, workspace=model.workspace, role=Role.OWNER)
    users = list(Manifest.objects.filter(manifest_models__model=model).order_by("name", "version"))
    if users:
        names = ", ".join(m.ref for m in users[:5]) + (" …" if len(users) > 5 else "")
        raise Conflict(
            f"Model {model.ref} is used by manifest {names}: delete the manifest first.", code="in_use",
        )
    activity_record(workspace=model.workspace, actor=user, verb="model.deleted", target=model)
    stored = model.file
    model.delete()
    delete_files_on_commit([stored])


def content_hash(*, runtime: str, files: dict[str, dict], models: list[Model]) -> str:
    """sha256 over everything a manifest holds: each file's path and sha256, each model's file name
    and sha256, and the runtime. Two manifests with the same hash build the same image."""
    digest = hashlib.sha256()
    digest.update(f"runtime {runtime}\n".encode())
    for path in sorted(files):
        digest.update(f"file {path} {files[path]['sha256']}\n".encode())
    for model in sorted(models, key=lambda m: m.file_name):
        digest.update(f"model {model.file_name} {model.sha256}\n".encode())
    return digest.hexdigest()


def manifest_create(*, workspace: Workspace, name: str, models: list[Model], score: bytes, schema: bytes,
                    requirements: bytes | None, user, runtime: str = Manifest.Runtime.PYTHON, project=None,
                    confirm_unknown: bool = False, one_shot: bool = False) -> Manifest:
    """Creates the next version of manifest ``name``: the model versions + score.py +
    service_schema.json + requirements.txt (optional). Everything is checked before anything is
    stored; nothing of the user's code runs. Raises PortalError naming the problem; ScanRefused
    for a dangerous model version, or an unknown one without ``confirm_unknown``, that no owner
    accepted."""
    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    name = check_resource_name(name)
    if runtime not in Manifest.Runtime.values:
        raise PortalError(f"Unknown runtime {str(runtime)[:20]!r}: use 'python'.", fields={"runtime": "Use 'python'."})
    models = check_models(workspace, list(models))
    confirmed = model_scan.check_manifest_models(models, confirm_unknown=confirm_unknown, one_shot=one_shot)
    loaded_schema = check_schema(schema)
    check_score(score, run_function=loaded_schema.run_function)
    _, reqs = parse_requirements(requirements)

    contents = {Manifest.SCORE: bytes(score), Manifest.SCHEMA: bytes(schema)}
    if requirements is not None:
        contents[Manifest.REQUIREMENTS] = bytes(requirements)
    files = {path: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for path, data in contents.items()}
    manifest_id = uuid.uuid4()
    stored: list[str] = []
    try:
        for path, data in contents.items():
            stored.append(save_file(f"manifests/{manifest_id}/{path}", data).storage_name)
        files = {path: {**info, "storage": stored[i]} for i, (path, info) in enumerate(files.items())}
        with transaction.atomic():
            manifest = _create_versioned(
                Manifest, workspace=workspace, name=name, id=manifest_id, runtime=runtime, files=files, project=project,
                requirements=reqs, content_hash=content_hash(runtime=runtime, files=files, models=models), created_by=user,
            )
            ManifestModel.objects.bulk_create(
                [ManifestModel(manifest=manifest, model=model, position=i) for i, model in enumerate(models)]
            )
            detail = {"models": [m.ref for m in models], "hash": manifest.content_hash}
            if confirmed:
                detail["confirmed_unknown"] = confirmed
            activity_record(workspace=workspace, actor=user, verb="manifest.created", target=manifest, detail=detail)
    except BaseException:
        delete_files(stored)
        raise
    return manifest


def _project_file(project, path: str | None, *, field: str) -> bytes | None:
    from runs.models import ProjectFile

    if not path:
        return None
    found = ProjectFile.objects.filter(project=project, path=path.strip()).first()
    if found is None:
        message = f"Project '{project.name}' has no file {path[:120]!r}."
        raise PortalError(message, fields={field: message})
    return read_file(found.storage_name)


def manifest_create_from_project(*, workspace: Workspace, name: str, models: list[Model], project_ref, score_path: str,
                                 schema_path: str, requirements_path: str | None, user,
                                 runtime: str = Manifest.Runtime.PYTHON, confirm_unknown: bool = False) -> Manifest:
    """Creates a manifest from files of a project (their current content is copied): score.py and
    the schema at the given paths, requirements.txt when a path is given. Raises PortalError for an
    unknown project or path, then everything manifest_create checks."""
    from runs.models import Project

    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    project = project_ref if isinstance(project_ref, Project) else selectors.find_project(workspace, str(project_ref or ""))
    if project is None or project.workspace_id != workspace.pk:
        message = f"Unknown project {str(project_ref)[:80]!r} in workspace '{workspace.name}'."
        raise PortalError(message, fields={"project": message})
    score = _project_file(project, score_path or Manifest.SCORE, field="score")
    schema = _project_file(project, schema_path or Manifest.SCHEMA, field="schema")
    requirements = _project_file(project, requirements_path, field="requirements")
    return manifest_create(workspace=workspace, name=name, models=models, score=score, schema=schema,
                           requirements=requirements, user=user, runtime=runtime, project=project,
                           confirm_unknown=confirm_unknown)


def manifest_file(manifest: Manifest, path: str) -> bytes:
    """Returns the content of one of the manifest's files; NotFound for a path it does not hold."""
    from core.errors import NotFound

    info = manifest.files.get(path)
    if info is None:
        raise NotFound(f"Manifest {manifest.ref} has no file {path[:80]!r}; it holds {', '.join(sorted(manifest.files))}.")
    return read_file(info["storage"])


def manifest_delete(*, manifest: Manifest, user) -> list[Image]:
    """Deletes a manifest, its files and the images built from it; returns those images. Their
    Docker images leave the engine after the commit (``registry.tasks.remove_engine_image``: the
    tag, and the bytes when no other tag holds them). Raises Conflict naming the services that run
    one of its images (or are being removed with one), or an image that is building or being removed."""
    from django.db.models import ProtectedError, RestrictedError

    from registry.tasks import remove_engine_image

    require_role(user=user, workspace=manifest.workspace, role=Role.OWNER)
    with transaction.atomic():
        images = list(Image.objects.select_for_update().filter(manifest_id=manifest.pk).order_by("name", "version"))
        _check_manifest_removable(manifest, images)
        for image in images:
            activity_record(workspace=manifest.workspace, actor=user, verb="image.deleted", target=image,
                            detail={"tag": image.tag, "by": f"manifest {manifest.ref} deleted"})
        activity_record(workspace=manifest.workspace, actor=user, verb="manifest.deleted", target=manifest,
                        detail={"images": [i.ref for i in images]} if images else None)
        stored = [info["storage"] for info in manifest.files.values()]
        try:
            Image.objects.filter(pk__in=[i.pk for i in images]).delete()
        except (ProtectedError, RestrictedError):  # a service made from one in the moment it was checked
            raise Conflict(f"Manifest {manifest.ref} has an image a service was created from just now: delete the "
                           "service first.", code="in_use") from None
        manifest.delete()
        delete_files_on_commit(stored)
        removals = [(i.tag, i.image_id) for i in images if i.image_id]
        transaction.on_commit(lambda: [remove_engine_image.delay(tag, engine_id) for tag, engine_id in removals])
    return images


def _check_manifest_removable(manifest: Manifest, images: list[Image]) -> None:
    def refs(items) -> str:
        return ", ".join(items[:5]) + (" …" if len(items) > 5 else "")

    services = selectors.services_using_images([i.pk for i in images], include_deleted=True)
    live = [s for s in services if getattr(s, "status", "") != "deleted"]
    if live:
        raise Conflict(f"Manifest {manifest.ref} has an image used by service {refs([s.name for s in live])}: "
                       "delete the service, or update it to an image of another manifest, then delete the manifest.",
                       code="in_use")
    if services:  # a deleted service's row lingers until its containers are gone, and still points here
        raise Conflict(f"Manifest {manifest.ref} has an image still held by service "
                       f"{refs([s.name for s in services])}, which is being removed: try again in a minute.",
                       code="in_use")
    building = [i.ref for i in images if i.status == Image.Status.BUILDING]
    if building:
        raise Conflict(f"Image {refs(building)} of manifest {manifest.ref} is building: wait for the build to finish, "
                       "then delete the manifest.", code="building")
    deleting = [i.ref for i in images if i.status == Image.Status.DELETING]
    if deleting:
        raise Conflict(f"Image {refs(deleting)} of manifest {manifest.ref} is being removed: try again in a minute.",
                       code="deleting")


def image_repository(workspace: Workspace, name: str) -> str:
    """Returns ``mlportal/<workspace>/<name>``: a valid Docker repository name for any workspace
    name (its runs of separators are folded, since Docker allows single ones only). The ``/``
    keeps two workspaces apart: with a ``-`` between them, workspace ``team-a``'s image ``churn``
    and workspace ``team``'s ``a-churn`` had one tag, and each build took it from the other."""
    ws = re.sub(r"[-_.]{2,}", "-", workspace.name).strip("-_.") or "ws"
    return f"mlportal/{ws}/{name}"


def image_labels(*, image: Image, manifest: Manifest) -> dict[str, str]:
    from compute.engine import LABEL_ID
    from deployments.worker import LABEL_PORTAL
    from workspaces.instance import portal_instance

    models = manifest.model_versions.order_by("manifest_models__position")
    return {
        LABEL_ID: str(image.pk),
        # Which portal built it: retention prunes only its own dangling layers on a shared engine.
        LABEL_PORTAL: portal_instance(),
        "mlportal.workspace": manifest.workspace.name,
        "mlportal.manifest": manifest.ref,
        "mlportal.manifest_hash": manifest.content_hash,
        "mlportal.models": ",".join(m.ref for m in models),
    }


def image_create(*, manifest: Manifest, user, name: str | None = None) -> Image:
    """Creates the next version of image ``name`` (default: the manifest's name), queued; the build
    task is enqueued when the transaction commits. Returns the image."""
    from registry.tasks import build_image

    workspace = manifest.workspace
    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    name = check_resource_name(name or manifest.name, what="image name")
    repository = image_repository(workspace, name)
    with transaction.atomic():
        image = _create_versioned(Image, workspace=workspace, name=name, manifest=manifest, created_by=user, tag="")
        image.tag = f"{repository}:{image.version}"
        image.labels = image_labels(image=image, manifest=manifest)
        image.save(update_fields=["tag", "labels"])
        activity_record(workspace=workspace, actor=user, verb="image.created", target=image,
                        detail={"manifest": manifest.ref, "tag": image.tag})
        image_id = str(image.pk)
        transaction.on_commit(lambda: build_image.delay(image_id))
    return image


def image_check_removable(image: Image) -> None:
    """Raises Conflict while ``image`` builds or a service (a deleted one too, until its containers
    are gone) points at it: what must hold before its row and engine image go."""
    if image.status == Image.Status.BUILDING:
        raise Conflict(f"Image {image.ref} is building: wait for the build to finish, then delete it.", code="building")
    services = selectors.services_using_images([image.pk])
    if services:
        names = ", ".join(str(getattr(s, "name", s.pk)) for s in services[:5])
        raise Conflict(f"Image {image.ref} is used by service {names}: delete the service first.", code="in_use")
    if selectors.services_using_images([image.pk], include_deleted=True):
        # A deleted service's row lingers until its containers are gone, and still points here.
        raise Conflict(f"Image {image.ref} is still held by a service being removed: try again in a minute.", code="in_use")


def image_delete(*, image: Image, user) -> None:
    """Deletes an image record at once; its Docker image is removed after the commit, by the task
    ``registry.tasks.remove_engine_image`` (``registry.worker.engine_image_remove``), so the request
    neither waits on an engine nor holds a lock while one works. Raises Conflict while it builds,
    while a service uses it (naming the service) or while retention is removing it."""
    from django.db.models import ProtectedError, RestrictedError

    from registry.tasks import remove_engine_image

    require_role(user=user, workspace=image.workspace, role=Role.OWNER)
    with transaction.atomic():
        locked = Image.objects.select_for_update().select_related("workspace").filter(pk=image.pk).first()
        if locked is None:
            return
        if locked.status == Image.Status.DELETING:
            raise Conflict(f"Image {locked.ref} is being removed already: it goes in a moment.", code="deleting")
        image_check_removable(locked)
        tag, engine_id = locked.tag, locked.image_id
        activity_record(workspace=locked.workspace, actor=user, verb="image.deleted", target=locked, detail={"tag": tag})
        try:
            locked.delete()
        except (ProtectedError, RestrictedError):  # a service made from it in the moment it was checked
            raise Conflict(f"Image {locked.ref} is used by a service created just now: delete the service first.",
                           code="in_use") from None
        if engine_id:
            transaction.on_commit(lambda: remove_engine_image.delay(tag, engine_id))
