"""Every change to models, manifests and images goes through these functions.

The portal never loads a model file: files are copied, hashed and handed to Docker, never
unpickled. score.py is parsed (``ast``), never imported; requirements are parsed, never installed
here.
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from registry import model_scan, selectors
from registry.models import Image, ImageLogChunk, Manifest, ManifestModel, Model
from workspaces.errors import Conflict, PayloadTooLarge, PortalError
from workspaces.models import Role, Workspace
from workspaces.services import activity_record, require_role

logger = logging.getLogger(__name__)

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Manifest and image names end up in a Docker repository name: lowercase, single separators.
RESOURCE_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
FRAMEWORKS = ("scikit-learn", "xgboost", "lightgbm", "pytorch", "tensorflow", "keras", "onnx", "other")
MAX_SCORE_BYTES = 1024 * 1024
MAX_SCHEMA_BYTES = 5 * 1024 * 1024
MAX_REQUIREMENTS_BYTES = 64 * 1024
MAX_TAGS = 50
VERSION_ATTEMPTS = 5
CHUNK = 1024 * 1024


class EngineUnavailable(PortalError):
    """The Docker engine could not do what was asked (unreachable, or it refused)."""

    status_code = 503
    default_code = "engine_unavailable"


# --- checks on what users send ----------------------------------------------------------------

def _name_problem(value: str) -> str | None:
    if "/" in value or "\\" in value:
        return "must not contain path separators ('/' or '\\')"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "must not contain control characters (newlines, tabs…)"
    if value in (".", ".."):
        return "must not be '.' or '..'"
    return None


def check_model_name(value: str, *, field: str = "name", what: str = "model name") -> str:
    """Returns a valid model (or file) name: 1–100 letters, digits, '.', '_' or '-', starting with a
    letter or digit, like ``model.pkl``; raises PortalError naming the problem."""
    value = value if isinstance(value, str) else ""
    stripped = value.strip()
    if not stripped:
        raise PortalError(f"A {what} is needed.", fields={field: "This field is required."})
    problem = _name_problem(value)
    if problem is None and not MODEL_NAME_RE.match(stripped):
        problem = "may hold only letters, digits, '.', '_' or '-' (at most 100), starting with a letter or digit"
    if problem:
        message = f"The {what} {stripped[:60]!r} {problem}."
        raise PortalError(message, fields={field: message})
    return stripped


def check_resource_name(value: str, *, field: str = "name", what: str = "manifest name") -> str:
    """Returns a valid manifest or image name (it becomes part of a Docker image name)."""
    value = value if isinstance(value, str) else ""
    stripped = value.strip()
    if not stripped:
        raise PortalError(f"A {what} is needed.", fields={field: "This field is required."})
    problem = _name_problem(value)
    if problem is None and (len(stripped) > 63 or not RESOURCE_NAME_RE.match(stripped)):
        problem = ("may hold only lowercase letters and digits (at most 63), with single '-', '_' or '.' "
                   "between them, like 'churnpred'")
    if problem:
        message = f"The {what} {stripped[:60]!r} {problem}."
        raise PortalError(message, fields={field: message})
    return stripped


def check_description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PortalError("The description must be text.", fields={"description": "Expected text."})
    if len(value) > 5000:
        raise PortalError("The description is over 5000 characters: shorten it.", fields={"description": "Too long."})
    return value.strip()


def check_tags(value: Any) -> dict[str, str]:
    """Returns tags as {str: str}; numbers and booleans become text. Raises PortalError for anything
    that is not a flat JSON object of short, printable keys and values."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise PortalError('Tags must be a JSON object, like {"stage": "test"}.', fields={"tags": "Not valid JSON."}) from None
    if not isinstance(value, dict):
        raise PortalError('Tags must be a JSON object, like {"stage": "test"}.', fields={"tags": "Expected an object."})
    if len(value) > MAX_TAGS:
        raise PortalError(f"At most {MAX_TAGS} tags are allowed.", fields={"tags": "Too many tags."})
    tags: dict[str, str] = {}
    for key, item in value.items():
        if not key or len(key) > 64 or any(ord(c) < 32 for c in key):
            message = f"Tag name {key[:40]!r} must be 1–64 printable characters."
            raise PortalError(message, fields={"tags": message})
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, (int, float)):
            item = str(item)
        if not isinstance(item, str) or len(item) > 256 or any(ord(c) < 32 for c in item):
            message = f"Tag {key!r} needs a value of at most 256 printable characters (text or a number)."
            raise PortalError(message, fields={"tags": message})
        tags[key] = item
    return tags


def check_framework(value: Any, file_name: str) -> str:
    """Returns the framework declared (one of FRAMEWORKS), or "". The label a version gets comes from
    what its file references (see model_scan.scan_fields); a declaration only names the framework
    of a file that holds no pickle. The file name is no evidence: a malicious pickle named .pkl is
    not scikit-learn."""
    value = (value or "").strip().lower() if isinstance(value, str) else value
    if not value:
        return ""
    if value not in FRAMEWORKS:
        message = f"Unknown framework {str(value)[:40]!r}: use one of {', '.join(FRAMEWORKS)}."
        raise PortalError(message, fields={"framework": message})
    return value


# --- versions ----------------------------------------------------------------------------------

def _create_versioned(cls, *, workspace: Workspace, name: str, **fields):
    """Creates ``cls`` as the next version of ``name`` in ``workspace``. Writers queue on the
    workspace's row (PostgreSQL; SQLite serialises writers itself), so racing registrations take
    consecutive numbers in turn; should two still meet, the unique constraint lets one win and the
    other retries with the next."""
    for attempt in range(VERSION_ATTEMPTS):
        try:
            with transaction.atomic():
                # NO KEY UPDATE: registrations queue behind each other, while inserts that only
                # point at the workspace (activity, logs, services) are not held up by it.
                list(Workspace.objects.select_for_update(no_key=True).filter(pk=workspace.pk).values_list("pk", flat=True))
                latest = cls.objects.filter(workspace=workspace, name=name).aggregate(v=Max("version"))["v"] or 0
                return cls.objects.create(workspace=workspace, name=name, version=latest + 1, **fields)
        except IntegrityError:
            if attempt == VERSION_ATTEMPTS - 1:
                raise Conflict(f"Too many versions of '{name}' are being created at once; try again.") from None
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


# --- files -------------------------------------------------------------------------------------

def _chunks(fileobj: IO[bytes]) -> Iterator[bytes]:
    if hasattr(fileobj, "chunks"):
        yield from fileobj.chunks(CHUNK)
        return
    while True:
        data = fileobj.read(CHUNK)
        if not data:
            return
        yield data


def _store_upload(fileobj: IO[bytes], *, storage_name: str, what: str, field: str) -> tuple[str, int, str]:
    """Streams ``fileobj`` into the default storage; returns (storage name, size, sha256).

    Spools through a temporary file first, so an empty or over-cap upload is refused before
    anything lands in storage."""
    cap = settings.MLPORTAL_MAX_UPLOAD_BYTES
    digest = hashlib.sha256()
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
        for data in _chunks(fileobj):
            size += len(data)
            if size > cap:
                message = f"The {what} is over the upload limit of {cap} bytes: upload a smaller file."
                raise PayloadTooLarge(message, fields={field: message})
            digest.update(data)
            spool.write(data)
        if size == 0:
            message = f"The {what} is empty: upload the file itself."
            raise PortalError(message, fields={field: message})
        spool.seek(0)
        stored = default_storage.save(storage_name, File(spool))
    return stored, size, digest.hexdigest()


def _delete_files(names: Iterable[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            logger.exception("could not delete stored file %s", name)


def _delete_files_on_commit(names: list[str]) -> None:
    transaction.on_commit(lambda: _delete_files(names))


def read_stored(name: str) -> bytes:
    with default_storage.open(name, "rb") as handle:
        return handle.read()


# --- models ------------------------------------------------------------------------------------

def _register(*, workspace: Workspace, name: str, user, file_name: str, description: Any, tags: Any,
              framework: Any, store, run=None, source_path: str = "") -> Model:
    """Checks everything, stores the file with ``store(storage_name) -> (name, size, sha256)``,
    then creates the next version; the stored file is removed again when the row is not made."""
    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    name = check_model_name(name)
    description = check_description(description)
    tags = check_tags(tags)
    framework = check_framework(framework, file_name)
    stored, size, sha256 = store(f"models/{workspace.id}/{uuid.uuid4().hex}/{file_name}")
    try:
        # Scanned (opcodes only, never loaded) before it becomes a version; the verdict is the version's.
        scan = model_scan.scan_fields(model_scan.scan_stored(stored, file_name), declared_framework=framework)
        framework = scan.pop("framework")
        with transaction.atomic():
            lineage = {}
            if run is not None:
                lineage = {"run": run, "project": run.project}
            model = _create_versioned(
                Model, workspace=workspace, name=name, description=description, tags=tags, framework=framework,
                file_name=file_name, file=stored, size=size, sha256=sha256, source_path=source_path,
                created_by=user, **lineage, **scan,
            )
            detail = {"size": size, "sha256": sha256, "scan": model.scan_verdict}
            if run is not None:
                detail["run"] = str(run.pk)
            activity_record(workspace=workspace, actor=user, verb="model.registered", target=model, detail=detail)
            model_scan.carry_acceptance(model, user=user)
    except BaseException:
        _delete_files([stored])
        raise
    return model


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
    with default_storage.open(source, "rb") as handle:
        stored, size, sha256 = _store_upload(handle, storage_name=storage_name, what="run output", field="path")
    if expected_sha256 and sha256 != expected_sha256:
        _delete_files([stored])
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
    _delete_files_on_commit([stored])


# --- manifests ---------------------------------------------------------------------------------

def check_score(score: bytes, *, run_function: str = "run") -> str:
    """Returns score.py as text after checking, without running it, that it parses and defines
    top-level ``init`` and ``run`` (or the schema's run function)."""
    if not isinstance(score, (bytes, bytearray)) or not score.strip():
        raise PortalError("score.py is empty: it needs init() and run(input) functions.", fields={"score": "Empty file."})
    if len(score) > MAX_SCORE_BYTES:
        raise PortalError(f"score.py is over {MAX_SCORE_BYTES} bytes: keep the model out of it.", fields={"score": "Too large."})
    try:
        text = bytes(score).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PortalError("score.py is not UTF-8 text.", fields={"score": "Not UTF-8."}) from None
    try:
        tree = ast.parse(text, filename="score.py")
    except SyntaxError as exc:
        message = f"score.py has a syntax error at line {exc.lineno}: {exc.msg}."
        raise PortalError(message, fields={"score": message}) from None
    except ValueError as exc:  # e.g. NUL bytes
        raise PortalError(f"score.py cannot be parsed: {exc}.", fields={"score": str(exc)}) from None
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    missing = [f for f in ("init", run_function) if f not in defined]
    if missing:
        names = " and ".join(f"{f}()" for f in missing)
        message = f"score.py does not define {names} at top level: the scoring server calls init() once and {run_function}(input) per request."
        raise PortalError(message, fields={"score": message})
    return text


def check_schema(schema: bytes):
    """Returns the loaded Schema; raises PortalError carrying the SchemaError's message."""
    from mlportal_runtime.schema import SchemaError, load_schema

    if not isinstance(schema, (bytes, bytearray)) or not schema.strip():
        raise PortalError("service_schema.json is empty: generate it with generate_schema(run, inputs={...}).", fields={"schema": "Empty file."})
    if len(schema) > MAX_SCHEMA_BYTES:
        raise PortalError(f"service_schema.json is over {MAX_SCHEMA_BYTES} bytes.", fields={"schema": "Too large."})
    try:
        return load_schema(bytes(schema))
    except SchemaError as exc:
        message = f"service_schema.json: {exc.message}"
        raise PortalError(message, fields={"schema": message}) from None


def check_requirement_line(line: str, *, where: str) -> str:
    """Returns ``line`` when it is a plain ``name[extras] (op version)`` requirement.

    Refused, each with a message saying why: pip options (``--index-url``, ``-r``, ``-e``), URL and
    path requirements (``pkg @ http://…``), environment markers (images are always Linux with
    Python 3.11, so a marker is constant there: drop it), control characters."""
    if any(ord(c) < 32 for c in line):
        raise PortalError(f"{where}: a requirement must be one line without control characters.",
                          fields={"requirements": "Control characters or newlines inside a requirement."})
    if line.startswith("-"):
        raise PortalError(f"{where}: {line[:80]!r} is a pip option; list package names with versions only (like 'pandas==2.2.3').",
                          fields={"requirements": "pip options are not allowed."})
    try:
        req = Requirement(line)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise PortalError(f"{where}: {line[:80]!r} is not a valid requirement ({reason}); write it like 'pandas==2.2.3'.",
                          fields={"requirements": "Not a valid requirement."}) from None
    if req.url:
        raise PortalError(f"{where}: {line[:80]!r} points at a URL or path; use a package name and version from the package index.",
                          fields={"requirements": "URL and path requirements are not allowed."})
    if req.marker:
        raise PortalError(f"{where}: {line[:80]!r} has an environment marker; images always run Linux with Python 3.11, so drop the '; …' part.",
                          fields={"requirements": "Environment markers are not allowed."})
    return line


def parse_requirements(data: bytes | None) -> tuple[str, list[str]]:
    """Returns (the file's text, its requirements in canonical form) for a requirements.txt."""
    from compute.wheels import RequirementsError, normalise_requirements

    if data is None:
        return "", []
    if len(data) > MAX_REQUIREMENTS_BYTES:
        raise PortalError(f"requirements.txt is over {MAX_REQUIREMENTS_BYTES} bytes.", fields={"requirements": "Too large."})
    try:
        text = bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PortalError("requirements.txt is not UTF-8 text.", fields={"requirements": "Not UTF-8."}) from None
    lines = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if line.lstrip().startswith("#"):
            continue
        line = line.split(" #", 1)[0].strip()
        if line:
            lines.append(check_requirement_line(line, where=f"requirements.txt line {number}"))
    try:
        return text, normalise_requirements(lines)
    except RequirementsError as exc:
        raise PortalError(f"requirements.txt: {exc}", fields={"requirements": str(exc)}) from None


def requirements_from_list(values: Any) -> bytes:
    """Returns requirements.txt content for a list of requirement strings (the JSON API's inline form);
    a value holding a newline is refused rather than split."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise PortalError("requirements must be a list of requirement strings.", fields={"requirements": "Expected a list of strings."})
    for i, value in enumerate(values):
        check_requirement_line(value.strip(), where=f"requirements[{i}]")
    return "".join(f"{v.strip()}\n" for v in values).encode()


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


def _check_models(workspace: Workspace, models: list[Model]) -> list[Model]:
    if not models:
        raise PortalError("A manifest needs at least one model version.", fields={"models": "Choose one or more model versions."})
    seen_ids, seen_files = set(), {}
    for model in models:
        if model.workspace_id != workspace.pk:
            raise PortalError(f"Model {model.ref} is not in workspace '{workspace.name}'.", fields={"models": "Unknown model version."})
        if model.pk in seen_ids:
            raise PortalError(f"Model {model.ref} is listed twice.", fields={"models": "Listed twice."})
        seen_ids.add(model.pk)
        if model.file_name in (Manifest.SCORE, Manifest.SCHEMA, Manifest.REQUIREMENTS):
            message = f"Model {model.ref} has the file name {model.file_name!r}, which the manifest's own file uses; register it under another file name."
            raise PortalError(message, fields={"models": message})
        if model.file_name in seen_files:
            message = (f"Models {seen_files[model.file_name]} and {model.ref} both have the file name {model.file_name!r}; "
                       "score.py loads models by file name, so register one under another file name.")
            raise PortalError(message, fields={"models": message})
        seen_files[model.file_name] = model.ref
    return models


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
    models = _check_models(workspace, list(models))
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
            stored.append(default_storage.save(f"manifests/{manifest_id}/{path}", ContentFile(data)))
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
        _delete_files(stored)
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
    return read_stored(found.storage_name)


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
    from workspaces.errors import NotFound

    info = manifest.files.get(path)
    if info is None:
        raise NotFound(f"Manifest {manifest.ref} has no file {path[:80]!r}; it holds {', '.join(sorted(manifest.files))}.")
    return read_stored(info["storage"])


@transaction.atomic
def manifest_delete(*, manifest: Manifest, user) -> None:
    """Deletes a manifest and its files. Raises Conflict naming the images built from it."""
    require_role(user=user, workspace=manifest.workspace, role=Role.OWNER)
    images = list(manifest.images.order_by("name", "version")[:6])
    if images:
        names = ", ".join(i.ref for i in images[:5]) + (" …" if len(images) > 5 else "")
        raise Conflict(f"Manifest {manifest.ref} is used by image {names}: delete the image first.", code="in_use")
    activity_record(workspace=manifest.workspace, actor=user, verb="manifest.deleted", target=manifest)
    stored = [info["storage"] for info in manifest.files.values()]
    manifest.delete()
    _delete_files_on_commit(stored)


# --- images ------------------------------------------------------------------------------------

def image_repository(workspace: Workspace, name: str) -> str:
    """Returns ``mlportal/<workspace>-<name>``: a valid Docker repository name for any workspace
    name (its runs of separators are folded, since Docker allows single ones only)."""
    ws = re.sub(r"[-_.]{2,}", "-", workspace.name).strip("-_.") or "ws"
    return f"mlportal/{ws}-{name}"


def image_labels(*, image: Image, manifest: Manifest) -> dict[str, str]:
    from compute.engine import LABEL_ID
    from deployments.services import LABEL_PORTAL
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


@transaction.atomic
def image_delete(*, image: Image, user) -> None:
    """Deletes an image record and removes it from the Docker engine. Raises Conflict while it
    builds or while a service uses it (naming the service), EngineUnavailable when the engine
    cannot remove it."""
    from compute.engine import EngineError, EngineUnreachable
    from compute.images import remove_image

    require_role(user=user, workspace=image.workspace, role=Role.OWNER)
    image = Image.objects.select_for_update().get(pk=image.pk)
    if image.status == Image.Status.BUILDING:
        raise Conflict(f"Image {image.ref} is building: wait for the build to finish, then delete it.", code="building")
    services = selectors.services_using_images([image.pk])
    if services:
        names = ", ".join(str(getattr(s, "name", s.pk)) for s in services[:5])
        raise Conflict(f"Image {image.ref} is used by service {names}: delete the service first.", code="in_use")
    if selectors.services_using_images([image.pk], include_deleted=True):
        # A deleted service's row lingers until its containers are gone, and still points here.
        raise Conflict(f"Image {image.ref} is still held by a service being removed: try again in a minute.", code="in_use")
    if image.image_id:
        try:
            remove_image(image.tag, base_url=settings.MLPORTAL_DOCKER_URL)
        except EngineUnreachable as exc:
            raise EngineUnavailable(f"Image {image.ref} was not deleted: {exc}") from None
        except EngineError as exc:  # e.g. a container the portal does not manage still runs it
            raise Conflict(f"The Docker engine refused to remove {image.tag}: {exc}", code="engine_refused") from None
    activity_record(workspace=image.workspace, actor=user, verb="image.deleted", target=image, detail={"tag": image.tag})
    image.delete()


# --- the build (run by registry.tasks.build_image) --------------------------------------------

STALE_BUILD_SECONDS = 180  # a building image whose worker gave no sign of life for this long is taken over
HEARTBEAT_SECONDS = 30
LOG_FLUSH_SECONDS = 0.5
LOG_FLUSH_CHARS = 16 * 1024


class BuildLog:
    """Collects build log lines and stores them as chunks, at most every LOG_FLUSH_SECONDS, so the
    page can tail the log while it builds. Each flush also beats the image's heartbeat. Past
    MLPORTAL_LOG_MAX_BYTES the rest is dropped, with a note saying so."""

    def __init__(self, image: Image) -> None:
        self.image_id = image.pk
        self.offset = image.log_size
        self.buffer: list[str] = []
        self.buffered = 0
        self.last_flush = 0.0  # the first line goes out at once: the page shows the build started
        self.limit = settings.MLPORTAL_LOG_MAX_BYTES
        self.truncated = False

    def __call__(self, line: str) -> None:
        if self.truncated:
            return
        text = f"{line}\n"
        if self.offset + self.buffered + len(text) > self.limit:
            text = f"[log truncated at {self.limit} characters; the build goes on]\n"
            self.truncated = True
        self.buffer.append(text)
        self.buffered += len(text)
        if self.buffered >= LOG_FLUSH_CHARS or time.monotonic() - self.last_flush >= LOG_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        now = timezone.now()
        if not self.buffer:
            Image.objects.filter(pk=self.image_id).update(heartbeat_at=now)
            return
        text = "".join(self.buffer)
        self.buffer, self.buffered = [], 0
        ImageLogChunk.objects.create(image_id=self.image_id, offset=self.offset, text=text)
        self.offset += len(text)
        Image.objects.filter(pk=self.image_id).update(log_size=self.offset, heartbeat_at=now)


def image_build_requirements(manifest: Manifest, log=None) -> list[str]:
    """Returns the manifest's requirements plus what the image needs and they do not list: pandas
    and numpy for a pandas schema, numpy for a numpy schema; and, when the manifest has no
    requirements.txt at all, the packages its model files and score.py import (see
    imported_requirements). ``log(line)`` hears what was added and why."""
    from mlportal_runtime.schema import load_schema

    reqs = list(manifest.requirements)
    listed = {canonicalize_name(Requirement(r).name) for r in reqs}
    added: list[tuple[str, str]] = []
    schema = load_schema(manifest_file(manifest, Manifest.SCHEMA))
    for needed, flag in (("pandas", schema.needs_pandas), ("numpy", schema.needs_numpy)):
        if flag and needed not in listed:
            added.append((needed, "the schema's inputs"))
            listed.add(needed)
    warnings: list[str] = []
    if Manifest.REQUIREMENTS not in manifest.files:
        models = [(m.file_name, m.file) for m in manifest.model_versions.all()]
        found, warnings = imported_requirements(models=models, score=manifest_file(manifest, Manifest.SCORE),
                                                local_modules={p[:-3] for p in manifest.files if p.endswith(".py")})
        added += [(req, why) for req, why in found if canonicalize_name(Requirement(req).name) not in listed]
    if log is not None:
        for req, why in added:
            log(f"adding requirement {req}: imported by {why}")
        for warning in warnings:
            log(f"warning: {warning}")
    return reqs + [req for req, _ in added]


# Modules that every image has: the runtime and the lab-era shim.
_RUNTIME_MODULES = frozenset({"mlportal_runtime", "azureml", "__main__", "__builtin__", "builtins"})


def imported_requirements(*, models: list[tuple[str, str]], score: bytes,
                          local_modules: set[str] = frozenset()) -> tuple[list[tuple[str, str]], list[str]]:
    """Which packages the model files (``(file name, storage name)`` pairs) and score.py import.

    Reads the pickles' opcodes (never unpickles) and score.py's import statements (never runs it;
    imports guarded by ``try: … except ImportError`` or ``if TYPE_CHECKING:`` are optional and
    left out); maps each top-level module to the installed distribution that provides it.
    Returns ``([(requirement, where), …], [warning, …])``: requirements (scikit-learn pinned to the
    version recorded in the pickle, the others unpinned, as the project template lists them) and
    what could not be told (a module no third-party distribution provides, a pickle read only in
    part). The standard library, the runtime, the portal's own package and the manifest's own
    modules are never requirements."""
    import importlib.metadata
    import sys

    from mlportal_runtime.pickles import scan_pickle

    named: dict[str, str] = {}  # top-level module -> first file that names it
    versions: dict[str, str] = {}
    warnings: list[str] = []
    for file_name, storage_name in models:
        try:
            with default_storage.open(storage_name, "rb") as handle:
                scan = scan_pickle(handle)
        except OSError:
            continue
        if not scan.complete and scan.opcodes:
            warnings.append(f"{file_name} was read only in part (it is cut off, damaged or over the scan's size "
                            "cap): packages named after that point, and scikit-learn's version, are unknown; list them "
                            "in requirements.txt to be sure")
        for module in scan.modules:
            named.setdefault(module.split(".", 1)[0], file_name)
        for dist, version in scan.versions.items():
            versions.setdefault(canonicalize_name(dist), version)
    for module in _score_imports(score):
        named.setdefault(module, "score.py")
    providers = importlib.metadata.packages_distributions()
    own = {canonicalize_name(d) for d in providers.get("mlportal_runtime", [])}  # the portal itself
    found: dict[str, tuple[str, str]] = {}
    for module, where in named.items():
        if module in sys.stdlib_module_names or module in _RUNTIME_MODULES or module in local_modules:
            continue
        dists = sorted({canonicalize_name(d) for d in providers.get(module, [])})
        if len(dists) != 1 or dists[0] in own:
            warnings.append(f"{where} imports {module!r}, which no installed package provides: "
                            "list its package in requirements.txt if the service needs it")
            continue
        dist = dists[0]
        if dist in found:
            continue
        version = versions.get(dist)
        if version is not None and not _VERSION.fullmatch(version):
            warnings.append(f"{where} records {dist} version {version[:40]!r}, which is not a release number: "
                            f"installing {dist} unpinned")
            version = None
        found[dist] = (f"{dist}=={version}" if version else dist, where)
    return list(found.values()), warnings


_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*([.-]?(a|b|rc|post|dev)[0-9]*)*")


def _score_imports(score: bytes) -> list[str]:
    """Top-level names of score.py's absolute imports, anywhere in it, except optional ones: those
    inside ``try`` blocks that catch ImportError (or everything) and inside ``if TYPE_CHECKING:``."""
    try:
        tree = ast.parse(score)
    except (SyntaxError, ValueError):
        return []
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            optional.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            optional.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name.split(".", 1)[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".", 1)[0])
    return list(dict.fromkeys(names))


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError", "Exception", "BaseException")
               for t in types)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def image_app_files(manifest: Manifest) -> dict[str, bytes]:
    """Returns the files of the image's app dir: the manifest's files and each model under its
    registered file name (so score.py opens ``model.pkl`` as in the lab)."""
    files = {path: manifest_file(manifest, path) for path in manifest.files}
    for model in manifest.model_versions.all():
        files[model.file_name] = read_stored(model.file)
    return files


def _claim_build(image_id: str) -> Image | None:
    """Moves the image queued → building and returns it; takes over a build whose worker went
    silent. None when another worker has it or it is finished."""
    now = timezone.now()
    claimed = Image.objects.filter(pk=image_id, status=Image.Status.QUEUED).update(
        status=Image.Status.BUILDING, started_at=now, heartbeat_at=now,
    )
    if not claimed:
        stale = now - timezone.timedelta(seconds=STALE_BUILD_SECONDS)
        claimed = Image.objects.filter(pk=image_id, status=Image.Status.BUILDING, heartbeat_at__lt=stale).update(
            started_at=now, heartbeat_at=now,
        )
        if not claimed:
            return None
        ImageLogChunk.objects.filter(image_id=image_id).delete()
        Image.objects.filter(pk=image_id).update(log_size=0)
    return Image.objects.select_related("manifest", "workspace").get(pk=image_id)


class Heartbeat:
    """Beats the image's heartbeat from a background thread while the build runs, so a silent
    step (a long download, a compile) is not taken for a dead worker."""

    def __init__(self, image_id, interval: float = HEARTBEAT_SECONDS) -> None:
        self.image_id = image_id
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{image_id}", daemon=True)

    def _beat(self) -> None:
        from django.db import connection

        try:
            while not self.stop.wait(self.interval):
                Image.objects.filter(pk=self.image_id, status=Image.Status.BUILDING).update(heartbeat_at=timezone.now())
        finally:
            connection.close()  # this thread's own connection

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def image_is_building(image_id: str) -> bool:
    return Image.objects.filter(pk=image_id, status=Image.Status.BUILDING).exists()


def _finish(image: Image, **fields) -> bool:
    """building → succeeded / failed, guarded; False when someone else finished it."""
    fields.setdefault("finished_at", timezone.now())
    return bool(Image.objects.filter(pk=image.pk, status=Image.Status.BUILDING).update(**fields))


def image_build(*, image_id: str) -> str | None:
    """Builds a queued image: the environment image (requirements from the wheel cache), then the
    service image with the manifest's files and models. Returns the final status, or None when the
    image was not this worker's to build (already claimed, finished or deleted).

    A failed build stores the reason, the failing step and the log tail; it never raises for a
    build or engine failure (the status tells)."""
    image = _claim_build(image_id)
    if image is None:
        return None
    with Heartbeat(image.pk):
        return _build(image)


def _build(image: Image) -> str:
    from celery.exceptions import SoftTimeLimitExceeded
    from compute.engine import BuildError, EngineError
    from compute.envimage import ensure_env_image
    from compute.images import build_service_image

    log = BuildLog(image)
    started = time.monotonic()
    manifest = image.manifest
    try:
        log(f"building {image.tag} from manifest {manifest.ref} (hash {manifest.content_hash[:12]})")
        requirements = image_build_requirements(manifest, log=log)
        log(f"requirements: {', '.join(requirements) or '(none)'}")
        env_image = ensure_env_image(
            base_image=settings.MLPORTAL_BASE_IMAGE, requirements=requirements,
            wheel_cache=settings.MLPORTAL_WHEEL_CACHE, log=log, base_url=settings.MLPORTAL_DOCKER_URL,
            timeout_s=settings.MLPORTAL_BUILD_TIMEOUT, source_packages=settings.MLPORTAL_SOURCE_PACKAGES,
        )
        built = build_service_image(
            tag=image.tag, env_image=env_image, app_files=image_app_files(manifest), labels=image.labels, log=log,
            timeout_s=settings.MLPORTAL_BUILD_TIMEOUT, base_url=settings.MLPORTAL_DOCKER_URL,
        )
    except BuildError as exc:
        log(f"build failed: {exc}")
        log.flush()
        _finish(image, status=Image.Status.FAILED, error=str(exc)[:2000], error_step=(exc.step or "")[:255],
                error_log_tail=exc.log_tail[-8000:], build_seconds=time.monotonic() - started)
        return Image.Status.FAILED
    except (EngineError, ValueError) as exc:
        log(f"build failed: {exc}")
        log.flush()
        _finish(image, status=Image.Status.FAILED, error=str(exc)[:2000], build_seconds=time.monotonic() - started)
        return Image.Status.FAILED
    except SoftTimeLimitExceeded:
        message = f"the build went over its time limit ({settings.MLPORTAL_BUILD_TIMEOUT} s) and was stopped"
        log(message)
        log.flush()
        _finish(image, status=Image.Status.FAILED, error=message, build_seconds=time.monotonic() - started)
        return Image.Status.FAILED
    except BaseException as exc:
        # An unexpected error must not leave the image "building" forever.
        log(f"build failed: internal error {type(exc).__name__}: {exc}")
        log.flush()
        _finish(image, status=Image.Status.FAILED, error=f"internal error: {type(exc).__name__}: {exc}"[:2000],
                build_seconds=time.monotonic() - started)
        raise
    seconds = time.monotonic() - started
    log(f"built {image.tag} ({built['id'][:19]}, {built['size']} bytes) in {seconds:.1f} s")
    log.flush()
    _finish(image, status=Image.Status.SUCCEEDED, image_id=built["id"], size=built["size"], build_seconds=seconds)
    return Image.Status.SUCCEEDED
