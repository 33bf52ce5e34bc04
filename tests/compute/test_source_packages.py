"""No package code runs on the worker's host: the wheel cache takes binary wheels only, and where
an administrator allows source packages they are built in a throwaway container without network.
The proof is a tiny local source archive whose setup.py writes a marker file: it never appears on
the host."""
from __future__ import annotations

import io
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from compute.engine import LABEL_KIND, LABEL_PORTAL, connect
from compute.sourcebuild import build_source_wheels
from compute.wheels import RequirementsError, SourceBuild, ensure_wheels
from tests.compute.fixtures import BASE_IMAGE

pytestmark = pytest.mark.docker

SETUP_PY = '''
import pathlib, socket
pathlib.Path({marker!r}).write_text("setup.py ran here")
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    network = "yes"
except OSError:
    network = "no"
pathlib.Path({marker!r} + ".network").write_text(network)
from setuptools import setup
setup(name={name!r}, version="0.1", py_modules=["{module}"])
'''


@pytest.fixture
def sdist(tmp_path, monkeypatch):
    """A folder the host's pip finds packages in (PIP_FIND_LINKS), holding one source archive whose
    setup.py writes a marker file at a host path; returns (requirement, marker path)."""
    token = uuid.uuid4().hex[:8]
    name, module = f"mlportal-marker-{token}", f"mlportal_marker_{token}"
    marker = Path("/tmp") / f"mlportal-marker-{token}"
    files = {"setup.py": SETUP_PY.format(marker=str(marker), name=name, module=module), f"{module}.py": "VALUE = 1\n",
             "PKG-INFO": f"Metadata-Version: 1.0\nName: {name}\nVersion: 0.1\n"}
    links = tmp_path / "links"
    links.mkdir()
    with tarfile.open(links / f"{name}-0.1.tar.gz", "w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-0.1/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    yield f"{name}==0.1", marker
    for leftover in (marker, Path(str(marker) + ".network")):
        leftover.unlink(missing_ok=True)


def test_a_source_only_package_is_refused_and_its_setup_py_never_runs(tmp_path, sdist):
    requirement, marker = sdist
    with pytest.raises(RequirementsError) as caught:
        ensure_wheels([requirement], cache_dir=tmp_path / "wheels", log=lambda line: None)
    assert "binary wheels only" in str(caught.value) and "MLPORTAL_SOURCE_PACKAGES" in str(caught.value)
    assert not marker.exists()
    assert not list((tmp_path / "wheels").glob("*.whl"))


def test_an_allowed_source_package_is_built_in_a_container_without_network(tmp_path, sdist):
    requirement, marker = sdist
    logs: list[str] = []
    portal = f"portal-{uuid.uuid4().hex[:8]}"
    since = int(time.time()) - 1  # the engine runs on this host: one clock
    wheels = ensure_wheels([requirement], cache_dir=tmp_path / "wheels", log=logs.append,
                           source_build=SourceBuild(BASE_IMAGE, portal=portal))
    assert [w.name for w in wheels] == [f"{requirement.split('==')[0].replace('-', '_')}-0.1-py3-none-any.whl"]
    assert not marker.exists(), "setup.py ran on the worker's host"
    assert any("built" in line and "container without network" in line for line in logs), logs
    with connect() as client:  # the throwaway container is gone
        assert not client.containers.list(all=True, filters={"label": f"{LABEL_KIND}=source-build"})
        # ... and it carried the label of the portal that started it, as every container a portal makes does.
        created = list(client.events(since=since, until=int(time.time()) + 1, decode=True,
                                     filters={"type": "container", "event": "create", "label": f"{LABEL_PORTAL}={portal}"}))
    assert [e["Actor"]["Attributes"].get(LABEL_KIND) for e in created] == ["source-build"], created


def test_the_build_container_has_no_network(tmp_path, sdist):
    requirement, marker = sdist
    probe = tmp_path / "probe"
    probe.mkdir()
    # The same build, asked to report what setup.py saw: the marker files land in the container only,
    # so read them from a build that copies them into its wheel output.
    from compute import sourcebuild

    original = sourcebuild.BUILD_SCRIPT
    sourcebuild.BUILD_SCRIPT = original + f"; cp {marker}.network /build/out/network-seen.whl"
    try:
        built = build_source_wheels([requirement], cache_dir=probe, build=SourceBuild(BASE_IMAGE), log=lambda line: None)
    finally:
        sourcebuild.BUILD_SCRIPT = original
    seen = next(p for p in built if p.name == "network-seen.whl")
    assert seen.read_text() == "no"
    assert not marker.exists()
