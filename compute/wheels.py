"""The wheel cache on the worker's host.

Containers cannot reach a package index, so the worker fills a folder of wheels with the host's
pip (network allowed, the host's pip configuration applies) and build contexts copy from it only
the wheels a requirement set needs. Which wheels those are is decided by pip's own resolver run
offline against the cache (``pip install --dry-run --report``), so what the image installs is
exactly what was resolved here.

Assumes the containers run the host's Python minor version on the same libc family (the
default base images are Debian bookworm with Python 3.11, like the workers).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from compute.engine import BuildError

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "mlportal" / "wheels"


class RequirementsError(BuildError):
    """A requirement is malformed or cannot be resolved to wheels; the message names it."""


def normalise_requirements(requirements: list[str]) -> list[str]:
    """Returns the requirements in canonical form, without comments, blanks or duplicates,
    sorted. Raises RequirementsError for a line that is not a plain PEP 508
    requirement: pip options (``-r``, ``--index-url``, ``-e``) and URL/path requirements are
    refused, as they would read host files or reach other indexes."""
    seen: set[str] = set()
    for raw in requirements:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise RequirementsError(
                f"requirement {line!r} is a pip option; list package names with versions only "
                f"(for example 'pandas==2.2.3')", step="resolve requirements")
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise RequirementsError(f"requirement {line!r} is not valid: {exc}",
                                    step="resolve requirements") from exc
        if req.url:
            raise RequirementsError(
                f"requirement {line!r} points at a URL or path; use a package name and version "
                f"from the package index instead", step="resolve requirements")
        seen.add(_canonical(req))
    return sorted(seen)


def _canonical(req: Requirement) -> str:
    """``Pandas >= 2.0`` and ``pandas>=2.0`` are one requirement: one spelling for the hash."""
    text = canonicalize_name(req.name)
    if req.extras:
        text += "[" + ",".join(sorted(canonicalize_name(e) for e in req.extras)) + "]"
    text += str(req.specifier)
    if req.marker:
        text += f"; {req.marker}"
    return text


@contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Holds an exclusive advisory lock on ``lock_path`` (workers on one host share caches)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def offline_pip_env() -> dict[str, str]:
    """Returns an environment for pip runs that must see the given folders and nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # ignore every pip.conf (their find-links and indexes)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


class _Unresolved(Exception):
    def __init__(self, output: str) -> None:
        super().__init__(output)
        self.output = output


def _resolve_offline(req_file: Path, cache_dir: Path) -> list[Path]:
    """Returns the wheels of ``cache_dir`` that install ``req_file``; raises _Unresolved with
    pip's output when the cache cannot satisfy it."""
    with tempfile.TemporaryDirectory(prefix="mlportal-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
             "--quiet", "--no-index", "--only-binary", ":all:", "--find-links", str(cache_dir),
             "--report", str(report), "-r", str(req_file)],
            capture_output=True, text=True, env=offline_pip_env(), timeout=600,
        )
        if proc.returncode != 0:
            raise _Unresolved(proc.stdout + proc.stderr)
        data = json.loads(report.read_text())
    wheels = []
    for item in data.get("install", []):
        url = item.get("download_info", {}).get("url", "")
        parsed = urlparse(url)
        path = Path(unquote(parsed.path))
        if parsed.scheme != "file" or path.suffix != ".whl" or path.parent != cache_dir:
            raise _Unresolved(f"resolved {url} which is not a wheel of the cache")
        wheels.append(path)
    return sorted(wheels)


def _first_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return errors[0] if errors else (lines[-1] if lines else "pip failed without a message")


def _run_pip(cmd: list[str], *, log: Callable[[str], None], timeout_s: int) -> tuple[int, str, bool]:
    """Runs a pip command, streaming its output to ``log``; returns (exit code, last lines, expired)."""
    output: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    expired = threading.Event()

    def on_deadline() -> None:  # pip can sit silent (a slow download)
        expired.set()
        proc.kill()

    killer = threading.Timer(timeout_s, on_deadline)
    killer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            output.append(line)
            log(line)
        proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "\n".join(output[-40:]), expired.is_set()


def _download_binary(req_file: Path, cache_dir: Path, *, log: Callable[[str], None], timeout_s: int) -> tuple[bool, str]:
    """``pip download --only-binary=:all:`` into the cache with the host's pip configuration: wheels
    only, so no package code runs on this host (a wheel is unpacked, never executed, and pip builds
    nothing). Returns (success, pip's last lines); raises RequirementsError when pip overran."""
    code, tail, expired = _run_pip(
        [sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--dest", str(cache_dir),
         "--find-links", str(cache_dir), "--no-input", "--progress-bar", "off", "--disable-pip-version-check",
         "-r", str(req_file)], log=log, timeout_s=timeout_s)
    if expired:
        raise RequirementsError(f"filling the wheel cache took over {timeout_s} s",
                                step="download requirements", log_tail=tail)
    return code == 0, tail


def _fill_cache(req_file: Path, cache_dir: Path, *, log: Callable[[str], None], timeout_s: int,
                source_build: "SourceBuild | None" = None) -> None:
    """Downloads the wheels of ``req_file`` into the cache. A requirement with no wheel for this
    platform is refused, unless ``source_build`` is given (an administrator allowed source
    packages): then its source archive is fetched as a file and built into a wheel in a throwaway
    container without network (compute.sourcebuild), never on this host."""
    ok, tail = _download_binary(req_file, cache_dir, log=log, timeout_s=timeout_s)
    if ok:
        return
    if source_build is None:
        raise RequirementsError(
            f"could not download the requirements as wheels: {_first_error(tail)} (the portal installs binary "
            "wheels only; a package published only as source needs an administrator to allow source packages, "
            "MLPORTAL_SOURCE_PACKAGES=on, which builds them in a container without network)",
            step="download requirements", log_tail=tail)
    from compute.sourcebuild import build_source_wheels

    reqs = [line for line in req_file.read_text().splitlines() if line.strip()]
    binary, source = [], []
    with tempfile.TemporaryDirectory(prefix="mlportal-one-") as tmp:
        for req in reqs:  # which of them have no wheel
            one = Path(tmp) / "one.txt"
            one.write_text(req + "\n")
            done, _ = _download_binary(one, cache_dir, log=lambda line: None, timeout_s=timeout_s)
            (binary if done else source).append(req)
    log(f"no wheel for {', '.join(source)}: building from source in a container without network")
    build_source_wheels(source, cache_dir=cache_dir, build=source_build, log=log, timeout_s=timeout_s)
    ok, tail = _download_binary(req_file, cache_dir, log=log, timeout_s=timeout_s)  # their wheel dependencies
    if not ok:
        raise RequirementsError(f"could not download the requirements: {_first_error(tail)}",
                                step="download requirements", log_tail=tail)


@dataclass(frozen=True)
class SourceBuild:
    """Where source packages are built when an administrator allows them: a throwaway container of
    ``base_image`` (the images' own Python) on the engine at ``base_url``, without network. The
    container carries ``portal`` (the portal instance's id) as its ``mlportal.portal`` label, as
    every container a portal starts does."""

    base_image: str
    base_url: str | None = None
    portal: str = ""


def ensure_wheels(requirements: list[str], *, cache_dir: Path,
                  log: Callable[[str], None] = print, timeout_s: int = 1800,
                  source_build: SourceBuild | None = None) -> list[Path]:
    """Returns the wheel files of ``cache_dir`` that install ``requirements`` (dependencies
    included), downloading the missing wheels with the host's pip first (binary wheels only: no
    package's code runs on this host). Empty requirements give ``[]``. A cache that already
    satisfies the set is used without touching the network (so an unpinned requirement keeps the
    version first cached). A package without a wheel is refused unless ``source_build`` is given
    (see _fill_cache). Raises RequirementsError with pip's message when a requirement cannot be
    found or built."""
    reqs = normalise_requirements(requirements)
    if not reqs:
        return []
    cache_dir = cache_dir.expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlportal-reqs-") as tmp, file_lock(cache_dir / ".lock"):
        req_file = Path(tmp) / "requirements.txt"
        req_file.write_text("\n".join(reqs) + "\n")
        try:
            wheels = _resolve_offline(req_file, cache_dir)
        except _Unresolved:
            log(f"filling the wheel cache {cache_dir} for: {', '.join(reqs)}")
            _fill_cache(req_file, cache_dir, log=log, timeout_s=timeout_s, source_build=source_build)
        else:
            log(f"wheel cache has the {len(wheels)} wheel(s) for {', '.join(reqs)}")
            return wheels
        try:
            return _resolve_offline(req_file, cache_dir)
        except _Unresolved as exc:
            raise RequirementsError(
                f"could not resolve the requirements from the wheel cache: "
                f"{_first_error(exc.output)}",
                step="resolve requirements", log_tail=exc.output[-4000:]) from exc
