"""Input checks of the runs app that more than one entry point shares (runtime lines, the portal's
API and pages, the MLflow API): each returns the cleaned value or raises PortalError saying what to
change, with the field at fault."""
from __future__ import annotations

from typing import Any

from mlportal_runtime.logger import check_param as _runtime_check_param
from mlportal_runtime.logger import check_tag as _runtime_check_tag
from runs.models import NOTE_MAX
from workspaces.errors import PortalError


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
