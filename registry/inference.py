"""Which packages an image needs that its manifest does not list: pure code, no Django.

Reads the model pickles' opcodes (``mlportal_runtime.pickles``, never unpickled) and score.py's
import statements (``ast``, never run), and maps each top-level module to the installed
distribution that provides it. ``registry.worker.image_build_requirements`` feeds it a manifest's
files; anything else (a benchmark, a test) can feed it bytes.
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import IO

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mlportal_runtime.pickles import scan_pickle

# A model file for the analysis: (its file name, a callable that opens it for reading in binary).
Opener = Callable[[], AbstractContextManager[IO[bytes]]]


# Modules that every image has: the runtime and the lab-era shim.
_RUNTIME_MODULES = frozenset({"mlportal_runtime", "azureml", "__main__", "__builtin__", "builtins"})


def infer_requirements(*, listed: list[str], needs_pandas: bool, needs_numpy: bool, listed_is_complete: bool,
                       models: list[tuple[str, Opener]], score: bytes,
                       local_modules: set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """Returns (``listed`` plus what the image needs and they do not list, lines saying what was
    added and why): pandas and numpy for a pandas schema, numpy for a numpy schema; and, unless the
    list is complete (the manifest has a requirements.txt), the packages the model files and
    score.py import (see imported_requirements)."""
    reqs = list(listed)
    names = {canonicalize_name(Requirement(r).name) for r in reqs}
    added: list[tuple[str, str]] = []
    for needed, flag in (("pandas", needs_pandas), ("numpy", needs_numpy)):
        if flag and needed not in names:
            added.append((needed, "the schema's inputs"))
            names.add(needed)
    warnings: list[str] = []
    if not listed_is_complete:
        found, warnings = imported_requirements(models=models, score=score, local_modules=local_modules)
        added += [(req, why) for req, why in found if canonicalize_name(Requirement(req).name) not in names]
    notes = [f"adding requirement {req}: imported by {why}" for req, why in added]
    notes += [f"warning: {warning}" for warning in warnings]
    return reqs + [req for req, _ in added], notes


def imported_requirements(*, models: list[tuple[str, Opener]], score: bytes,
                          local_modules: set[str] = frozenset()) -> tuple[list[tuple[str, str]], list[str]]:
    """Which packages the model files (``(file name, opener)`` pairs) and score.py import.

    Reads the pickles' opcodes (never unpickles) and score.py's import statements (never runs it;
    imports guarded by ``try: … except ImportError`` or ``if TYPE_CHECKING:`` are optional and
    left out); maps each top-level module to the installed distribution that provides it.
    Returns ``([(requirement, where), …], [warning, …])``: requirements (scikit-learn pinned to the
    version recorded in the pickle, the others unpinned, as the project template lists them) and
    what could not be told (a module no third-party distribution provides, a pickle read only in
    part). The standard library, the runtime, the portal's own package and the manifest's own
    modules are never requirements."""
    named: dict[str, str] = {}  # top-level module -> first file that names it
    versions: dict[str, str] = {}
    warnings: list[str] = []
    for file_name, opener in models:
        try:
            with opener() as handle:
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
