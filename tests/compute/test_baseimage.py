"""The offline base image for air-gapped sites."""

import time

import pytest

from compute.baseimage import ensure_base_image
from compute.engine import image_id
from compute.images import remove_image
from tests.compute.fixtures import BASE_IMAGE

pytestmark = pytest.mark.docker


def test_a_present_base_image_returns_at_once(docker_engine):
    started = time.monotonic()
    logs: list[str] = []
    assert ensure_base_image(BASE_IMAGE, log=logs.append) == image_id(BASE_IMAGE)
    assert time.monotonic() - started < 3 and "is present" in logs[0]


# About a minute and a Debian mirror (scripts/install_system_packages.sh installs debootstrap).
def test_a_missing_base_image_is_built_offline_with_debootstrap(docker_engine):
    name = "mlportal-test-base:bookworm"
    remove_image(name)
    logs: list[str] = []
    try:
        made = ensure_base_image(name, log=logs.append)
        assert made == image_id(name)
        assert any("pull failed" in line for line in logs)
        assert any("importing the root filesystem" in line for line in logs)
    finally:
        remove_image(name)
