"""Checks on what users send for models, manifests and images: each returns the cleaned value or
raises PortalError naming the field and saying what to change. score.py is parsed (``ast``), never
imported; requirements are parsed, never installed. No database writes here."""
from __future__ import annotations

import ast
import json
import re
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from core.errors import PortalError
from registry.models import Manifest, Model
from workspaces.models import Workspace


MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Manifest and image names end up in a Docker repository name: lowercase, single separators.
RESOURCE_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
FRAMEWORKS = ("scikit-learn", "xgboost", "lightgbm", "pytorch", "tensorflow", "keras", "onnx", "other")
MAX_SCORE_BYTES = 1024 * 1024
MAX_SCHEMA_BYTES = 5 * 1024 * 1024
MAX_REQUIREMENTS_BYTES = 64 * 1024
MAX_TAGS = 50


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


def check_models(workspace: Workspace, models: list[Model]) -> list[Model]:
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
