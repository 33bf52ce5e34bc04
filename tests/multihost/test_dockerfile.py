"""The portal's Dockerfile copies every package the project installs (it lacked retention/ and
monitoring/, which settings load: an image of it could not start), and pulls nothing but its base."""
from __future__ import annotations

import tomllib
from pathlib import Path

from tests.multihost.image import _copied_sources

REPO = Path(__file__).resolve().parents[2]


def test_the_dockerfile_copies_every_installed_package():
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    missing = packages - set(_copied_sources())
    assert not missing, f"the Dockerfile does not COPY {sorted(missing)}"


def test_the_dockerfile_has_one_stage_on_the_configurable_base_image():
    froms = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("FROM")]
    assert froms == ["FROM ${BASE_IMAGE}"]
