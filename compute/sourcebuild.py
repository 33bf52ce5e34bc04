"""Source packages, when an administrator allows them: fetched as files, built in a container.

A package published only as a source archive runs its build code (``setup.py``, a build backend)
to become a wheel, and pip even runs it just to read its metadata. None of that happens on the
worker's host: the archive is found and downloaded here as a plain file (the host's pip
configuration says where from: ``find-links`` folders or pages, then the ``index-url`` and
``extra-index-url`` simple pages), and ``pip wheel --no-deps --no-build-isolation`` runs in a
throwaway container of the base image with no network, no capabilities and bounded resources. Only
the ``.whl`` files it wrote come back into the wheel cache; the container is always removed.
Build tools come from the base image (setuptools there); a package that needs others fails with
pip's message.
"""
from __future__ import annotations

import hashlib
import io
import re
import secrets
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import docker.errors
import requests
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from compute.engine import LABEL_ID, LABEL_KIND, LABEL_PORTAL, connect, engine_errors
from compute.wheels import RequirementsError, SourceBuild

SDIST_SUFFIXES = (".tar.gz", ".zip")
MAX_SDIST_BYTES = 200 * 1024 * 1024
DEFAULT_INDEX = "https://pypi.org/simple"


def pip_sources() -> tuple[list[str], list[str]]:
    """Returns (find-links entries, index URLs) of the host's pip configuration, environment
    variables included (what ``pip config list`` shows)."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    links: list[str] = []
    indexes: list[str] = []
    extra: list[str] = []
    for line in done.stdout.splitlines():
        match = re.match(r"^[^.]*\.(find-links|index-url|extra-index-url)='(.*)'$", line.strip())
        if not match:
            continue
        values = match.group(2).split()
        {"find-links": links, "index-url": indexes, "extra-index-url": extra}[match.group(1)].extend(values)
    return links, (indexes or [DEFAULT_INDEX]) + extra


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def _candidates(location: str, name: str) -> list[tuple[str, str]]:
    """(file name, where) of every file a find-links entry or index page offers for ``name``."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        folder = Path(unquote(parsed.path) if parsed.scheme == "file" else location)
        if folder.is_dir():
            return [(p.name, str(p)) for p in sorted(folder.iterdir()) if p.is_file()]
        return []
    page = location if location.rstrip("/").endswith(name) else f"{location.rstrip('/')}/{name}/"
    try:
        response = requests.get(page, timeout=30)
    except requests.RequestException:
        return []
    if response.status_code != 200:
        return []
    links = _Links()
    links.feed(response.text)
    out = []
    for href in links.hrefs:
        url = urljoin(response.url, href)
        out.append((unquote(urlparse(url).path.rsplit("/", 1)[-1]), url))
    return out


def _sdist_version(filename: str, name: str) -> Version | None:
    lower = filename.lower()
    suffix = next((s for s in SDIST_SUFFIXES if lower.endswith(s)), None)
    if suffix is None:
        return None
    stem = filename[: -len(suffix)]
    for i in range(len(stem) - 1, 0, -1):
        if stem[i] == "-" and canonicalize_name(stem[:i]) == name:
            try:
                return Version(stem[i + 1:])
            except InvalidVersion:
                return None
    return None


def fetch_sdist(requirement: str, dest: Path) -> Path:
    """Downloads (or copies) the newest source archive that satisfies ``requirement`` into
    ``dest`` as a plain file, running none of it; RequirementsError when none is found."""
    req = Requirement(requirement)
    name = canonicalize_name(req.name)
    links, indexes = pip_sources()
    best: tuple[Version, str, str] | None = None
    for location in [*links, *indexes]:
        for filename, where in _candidates(location, name):
            version = _sdist_version(filename, name)
            if version is None or not req.specifier.contains(version, prereleases=bool(req.specifier.prereleases)):
                continue
            if best is None or version > best[0]:
                best = (version, filename, where)
    if best is None:
        raise RequirementsError(f"no wheel and no source archive found for {requirement!r}", step="download requirements")
    _, filename, where = best
    target = dest / re.sub(r"[^A-Za-z0-9._+-]", "_", filename)
    if urlparse(where).scheme in ("http", "https"):
        url, _, fragment = where.partition("#")
        digest = hashlib.sha256()
        with requests.get(url, stream=True, timeout=60) as response, open(target, "wb") as out:
            response.raise_for_status()
            size = 0
            for chunk in response.iter_content(1024 * 1024):
                size += len(chunk)
                if size > MAX_SDIST_BYTES:
                    raise RequirementsError(f"the source archive of {requirement!r} is over {MAX_SDIST_BYTES} bytes",
                                            step="download requirements")
                digest.update(chunk)
                out.write(chunk)
        if fragment.startswith("sha256=") and fragment[7:] != digest.hexdigest():
            raise RequirementsError(f"the source archive of {requirement!r} does not match its sha256",
                                    step="download requirements")
    else:
        target.write_bytes(Path(unquote(urlparse(where).path) if where.startswith("file:") else where).read_bytes())
    return target


BUILD_SCRIPT = ("set -e; mkdir -p /build/out; "
                "PIP_CONFIG_FILE=/dev/null python3 -m pip wheel --no-deps --no-build-isolation --no-index "
                "--disable-pip-version-check --progress-bar off -w /build/out /build/src/*")


def build_source_wheels(requirements: list[str], *, cache_dir: Path, build: SourceBuild,
                        log: Callable[[str], None], timeout_s: int = 1800) -> list[Path]:
    """Builds wheels of ``requirements`` from their source archives in a throwaway container without
    network and puts them into ``cache_dir``; returns them. RequirementsError when an archive is
    missing or the build fails (with the build's last lines)."""
    with tempfile.TemporaryDirectory(prefix="mlportal-src-") as tmp:
        archives = [fetch_sdist(req, Path(tmp)) for req in requirements]
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            for archive in archives:
                tar.add(archive, arcname=f"build/src/{archive.name}")
        context.seek(0)
        with connect(build.base_url, timeout=timeout_s + 60) as client, engine_errors(build.base_url):
            container = client.containers.create(
                build.base_image, command=["sh", "-c", BUILD_SCRIPT], name=f"mlportal-srcbuild-{secrets.token_hex(4)}",
                labels={LABEL_KIND: "source-build", LABEL_ID: secrets.token_hex(8),
                        **({LABEL_PORTAL: build.portal} if build.portal else {})}, network_mode="none",
                mem_limit="2g", memswap_limit="2g", pids_limit=512, cap_drop=["ALL"], security_opt=["no-new-privileges"],
                environment={"HOME": "/build", "PYTHONDONTWRITEBYTECODE": "1"}, working_dir="/", restart_policy={"Name": "no"})
            try:
                container.put_archive("/", context.getvalue())
                container.start()
                try:
                    status = container.wait(timeout=timeout_s)
                except requests.exceptions.ConnectionError:
                    raise RequirementsError(f"building from source took over {timeout_s} s",
                                            step="build source packages") from None
                output = container.logs().decode("utf-8", "replace")
                for line in output.splitlines():
                    log(f"[source build] {line}")
                if status.get("StatusCode") != 0:
                    raise RequirementsError(
                        f"building {', '.join(requirements)} from source failed (in a container without network)",
                        step="build source packages", log_tail=output[-4000:])
                chunks, _ = container.get_archive("/build/out")
                raw = io.BytesIO(b"".join(chunks))
            finally:
                try:
                    container.remove(force=True, v=True)
                except docker.errors.NotFound:
                    pass
    built = []
    with tarfile.open(fileobj=raw) as tar:
        for member in tar.getmembers():
            filename = member.name.rsplit("/", 1)[-1]
            if member.isfile() and filename.endswith(".whl") and "/" not in filename and not filename.startswith("."):
                target = cache_dir / filename
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    out.write(src.read())
                built.append(target)
    if not built:
        raise RequirementsError(f"building {', '.join(requirements)} from source gave no wheel", step="build source packages")
    log(f"built {', '.join(p.name for p in built)} in a container without network")
    return built
