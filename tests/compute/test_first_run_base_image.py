"""The first `make run` makes the base image when the engine lacks it (pull, else the offline
build), so the lab runs on a machine with no image registry. The detection, the pull attempt and
the offline build are the real ones; only debootstrap's download from a Debian mirror (outside
this machine) is stood in for by a script that lays out a tiny root filesystem, which the real
`docker import` then turns into an image. The full debootstrap build is the opt-in slow test in
test_baseimage.py."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from compute.engine import image_id
from compute.images import remove_image
from tests.conftest import REPO

pytestmark = pytest.mark.docker

FAKE_DEBOOTSTRAP = """#!/bin/sh
for rootfs; do :; done
echo "I: Retrieving Release (stand-in for the Debian mirror)"
mkdir -p "$rootfs/etc" "$rootfs/var/cache/apt/archives"
echo 'PRETTY_NAME="stand-in rootfs"' > "$rootfs/etc/os-release"
echo "I: Base system installed successfully."
"""


def _make_base_image(tmp_path, *args, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MLPORTAL_DATA_DIR": str(tmp_path / "data"), **env}
    return subprocess.run([sys.executable, "manage.py", "make_base_image", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=300)


def test_a_missing_base_image_is_pulled_else_built_offline_with_progress(docker_engine, tmp_path):
    name = f"mlportal-test-absent-base:{uuid.uuid4().hex[:8]}"
    fake = tmp_path / "debootstrap"
    fake.write_text(FAKE_DEBOOTSTRAP)
    fake.chmod(0o755)
    assert image_id(name) is None
    try:
        done = _make_base_image(tmp_path, "--optional", MLPORTAL_BASE_IMAGE=name, MLPORTAL_DEBOOTSTRAP=str(fake))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert f"[base image] pulling {name}" in lines
        assert any(line.startswith("[base image] pull failed") and "building" in line for line in lines)
        assert "[base image] I: Base system installed successfully." in lines
        assert f"[base image] importing the root filesystem as {name}" in lines
        made = image_id(name)
        assert made and f"{name} is ready ({made[:19]})" in done.stdout
        again = _make_base_image(tmp_path, "--optional", MLPORTAL_BASE_IMAGE=name, MLPORTAL_DEBOOTSTRAP=str(fake))
        assert f"[base image] base image {name} is present" in again.stdout and "pulling" not in again.stdout
    finally:
        remove_image(name)


def test_without_debootstrap_make_run_warns_and_goes_on_but_make_base_image_fails(docker_engine, tmp_path):
    name = f"mlportal-test-absent-base:{uuid.uuid4().hex[:8]}"
    missing = str(tmp_path / "no-such-debootstrap")
    optional = _make_base_image(tmp_path, "--optional", MLPORTAL_BASE_IMAGE=name, MLPORTAL_DEBOOTSTRAP=missing)
    assert optional.returncode == 0
    assert f"warning: the base image {name} is missing and could not be made: debootstrap is not installed" in optional.stderr
    strict = _make_base_image(tmp_path, MLPORTAL_BASE_IMAGE=name, MLPORTAL_DEBOOTSTRAP=missing)
    assert strict.returncode == 1 and "debootstrap is not installed" in strict.stderr
    assert image_id(name) is None


def test_make_run_makes_the_base_image_before_it_starts_the_portal():
    recipe = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    steps = [line for line in recipe if "manage.py" in line or "run_portal.py" in line]
    assert any("make_base_image --optional" in step for step in steps)
    assert steps.index(next(s for s in steps if "make_base_image" in s)) < steps.index(next(s for s in steps if "run_portal.py" in s))
