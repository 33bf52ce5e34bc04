"""Helpers for tests that need the compute package's images (importable by other test packages:
``from tests.compute.fixtures import prepare_sklearn_env``).

The wheel cache lives in the user's cache folder and the images in the engine's store, both keyed
by content hash, so a second test session reuses them.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

from compute.envimage import ensure_env_image

BASE_IMAGE = os.environ.get("MLPORTAL_TEST_BASE_IMAGE", "python:3.11-slim")
WHEEL_CACHE = Path(os.environ.get("MLPORTAL_WHEEL_CACHE", "~/.cache/mlportal/wheels")).expanduser()
SMALL_REQUIREMENTS = ["six"]
SKLEARN_REQUIREMENTS = ["numpy", "pandas", "scikit-learn"]


def prepare_env(requirements: list[str], *, log=lambda line: None) -> tuple[str, float]:
    """Returns (environment image tag, seconds it took) for ``requirements`` on the test base image."""
    started = time.monotonic()
    tag = ensure_env_image(base_image=BASE_IMAGE, requirements=requirements,
                           wheel_cache=WHEEL_CACHE, log=log)
    return tag, time.monotonic() - started


def prepare_sklearn_env(*, log=lambda line: None) -> str:
    """Returns the tag of the environment image with numpy, pandas and scikit-learn."""
    return prepare_env(SKLEARN_REQUIREMENTS, log=log)[0]


def make_snapshot(path: Path, files: dict[str, str | bytes]) -> Path:
    """Writes a project snapshot tar holding ``files`` (relative path -> content) to ``path``."""
    with tarfile.open(path, "w") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return path
