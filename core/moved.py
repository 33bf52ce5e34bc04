"""Old import paths kept working for the branches that were started before the rooms split
(issue 11). Remove with the last caller: ``grep -rn "core.moved" --include=*.py``.

``forward(__name__, [...])`` gives a module a ``__getattr__`` that finds a name it no longer
defines in the modules it moved to (``_lock`` also finds the now public ``lock``). It is looked up
lazily, so the request side never imports the worker side at import time.
"""

from __future__ import annotations

import importlib
import warnings


# Names that changed as well as moved: the old one → "module.new_name".
RENAMED = {
    "registry.services": {"read_stored": "core.storage.read_file", "_delete_files": "core.storage.delete_files",
                          "_delete_files_on_commit": "core.storage.delete_files_on_commit"},
    "runs.services": {"open_blob": "core.storage.open_file", "_delete_blobs": "core.storage.delete_files",
                      "_next_number": None},
    "deployments.services": {"_delete_stored": "core.storage.delete_files"},
}


def forward(module: str, targets: list[str]):
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        renamed = RENAMED.get(module, {}).get(name)
        if renamed:
            where, _, new = renamed.rpartition(".")
            warnings.warn(f"{module}.{name} moved to {renamed}", DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(where), new)
        for target in targets:
            found = importlib.import_module(target)
            for candidate in (name, name.lstrip("_")):
                if candidate and hasattr(found, candidate):
                    warnings.warn(f"{module}.{name} moved to {target}.{candidate}", DeprecationWarning, stacklevel=2)
                    return getattr(found, candidate)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
