"""User paths: every path a user names (a project file, an archive member, a script, a run output)
is cleaned here before it is used."""
from __future__ import annotations

import re

from core.errors import PortalError

PATH_MAX = 255


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
