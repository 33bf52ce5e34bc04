"""The portal's own image, built from its Dockerfile with this checkout's code, for the multi-host
test's second worker. Built once per content hash (of the Dockerfile and every file it copies) and
kept in the engine, so later test sessions and CI runs on this machine reuse it; the dependency layer
stays cached while pyproject.toml and the wheels do not change. `.ci/run` builds it before the
tests (`python -m tests.multihost.image`), so its first build is not timed as a test.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE_REPOSITORY = "mlportal-portal-test"
IMAGE_LABEL = "mlportal.test.portal-image"
BASE_IMAGE = "python:3.11-slim"  # the Dockerfile's default base (never rebuilt here)
ASSETS = "node_modules/chart.js/dist"
WHEEL_CACHE = Path(os.environ.get("MLPORTAL_CACHE_DIR", Path.home() / ".cache" / "mlportal")) / "portal-image-wheels"


class ImageError(Exception):
    pass


def docker(*args: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout, **kw)


def _copied_sources() -> list[str]:
    """The context paths the Dockerfile's COPY lines name (not those from another stage)."""
    sources = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w.rstrip("/") for w in words[1:-1] if not w.startswith("--")]
    return sources


def _copied_files() -> list[Path]:
    files: list[Path] = [REPO / "Dockerfile"]
    for name in _copied_sources():
        if name == ASSETS:
            continue  # hashed and copied on its own (not in git)
        if name == "docker/wheels":
            files.append(REPO / "docker" / "wheels" / "README.md")
            continue
        path = REPO / name
        if path.is_file():
            files.append(path)
        else:
            files.extend(p for p in sorted(path.rglob("*")) if p.is_file() and "__pycache__" not in p.parts)
    return files


def _content_hash(files: list[Path], assets: Path) -> str:
    digest = hashlib.sha256()
    for path in files + sorted(p for p in assets.rglob("*") if p.is_file()):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _wheels_for(context: Path) -> None:
    """The image's Python packages as wheels, so its build installs them without an index (a build
    container here reaches PyPI only through a proxy whose certificate is this host's). This host's
    pip fetches them first (its cache, its configuration); then pip in a throwaway container of the
    base image adds what that Python's markers need on top (redis wants async-timeout below 3.11.3),
    held to the versions this host chose."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"] + ["setuptools>=68", "wheel"]
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    target = context / "docker" / "wheels"
    # The set found for these requirements and this base image, kept so a code change skips pip.
    base_id = docker("image", "inspect", "-f", "{{.Id}}", BASE_IMAGE).stdout.strip()
    key = hashlib.sha256(json.dumps([deps, base_id]).encode()).hexdigest()[:24]
    listing = WHEEL_CACHE / f"set-{key}.txt"
    if listing.exists():
        names = listing.read_text().split()
        if names and all((WHEEL_CACHE / n).exists() for n in names):
            for name in names:
                shutil.copy(WHEEL_CACHE / name, target / name)
            return
    with tempfile.TemporaryDirectory(prefix="mlportal-wheels-") as tmp:
        work = Path(tmp)
        (work / "requirements.txt").write_text("\n".join(deps) + "\n")
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        subprocess.run([*pip, "download", "--quiet", "--only-binary", ":all:", "--dest", str(WHEEL_CACHE),
                        "--find-links", str(WHEEL_CACHE), "-r", str(work / "requirements.txt")], check=True, timeout=900)
        subprocess.run([*pip, "install", "--quiet", "--dry-run", "--ignore-installed", "--no-index", "--only-binary",
                        ":all:", "--find-links", str(WHEEL_CACHE), "--report", str(work / "report.json"),
                        "-r", str(work / "requirements.txt")], check=True, timeout=900)
        chosen = json.loads((work / "report.json").read_text())["install"]
        (work / "constraints.txt").write_text("".join(f"{i['metadata']['name']}=={i['metadata']['version']}\n"
                                                      for i in chosen))
        # Only the wheels the image installs go into the context (so its layer stays cached while
        # they do not change); pip copies them from the cache and fetches what that lacks.
        mounts = ["-v", f"{WHEEL_CACHE}:/wheels:ro", "-v", f"{work}:/work:ro", "-v", f"{target}:/out"]
        cert = []
        if Path("/etc/ssl/certs/ca-certificates.crt").exists():
            mounts += ["-v", "/etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro"]
            cert = ["--cert", "/host-ca.crt"]
        # Offline from the cache first (it usually has all); the index only for what it lacks.
        download = ("/tmp/v/bin/pip download --quiet --disable-pip-version-check --only-binary :all: "
                    "--find-links /wheels --dest /out -c /work/constraints.txt -r /work/requirements.txt")
        script = (f"python3 -m venv /tmp/v && {{ {download} --no-index 2>/dev/null || {download} {' '.join(cert)}; }}")
        fill = docker("run", "--rm", *mounts, BASE_IMAGE, "sh", "-c", script, check=False, timeout=900)
        if fill.returncode != 0:
            raise ImageError(f"fetching the image's wheels for its Python failed:\n{(fill.stdout + fill.stderr)[-3000:]}")
    names = sorted(wheel.name for wheel in target.glob("*.whl"))
    for name in names:
        if not (WHEEL_CACHE / name).exists():
            shutil.copy(target / name, WHEEL_CACHE / name)
    listing.write_text("\n".join(names) + "\n")


def ensure_portal_image() -> str:
    """Returns the tag of the image of this checkout, building it when the engine lacks it; older
    images of this label are removed then (one in use stays: no force)."""
    assets = REPO / ASSETS
    if not assets.is_dir():
        raise ImageError(f"{ASSETS} is missing: run `make install` (npm install) first; the Dockerfile copies it")
    files = _copied_files()
    content = _content_hash(files, assets)
    tag = f"{IMAGE_REPOSITORY}:{content[:16]}"
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    with tempfile.TemporaryDirectory(prefix="mlportal-image-") as tmp:
        context = Path(tmp)
        for path in files:
            (context / path.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, context / path.relative_to(REPO))
        shutil.copytree(assets, context / ASSETS)
        _wheels_for(context)
        build = subprocess.run(["docker", "build", "--build-arg", "PIP_NO_INDEX=1", "--label", f"{IMAGE_LABEL}={content}",
                                "-t", tag, str(context)], capture_output=True, text=True, timeout=1800,
                               env={**os.environ, "DOCKER_BUILDKIT": "0"})
        if build.returncode != 0:
            raise ImageError(f"building the portal's Dockerfile failed:\n{(build.stdout + build.stderr)[-4000:]}")
    old = docker("images", "-q", "--filter", f"label={IMAGE_LABEL}", "--filter", f"before={tag}", check=False).stdout.split()
    for image in set(old):
        docker("rmi", image, check=False)
    return tag


if __name__ == "__main__":
    try:
        print(f"portal image: {ensure_portal_image()}")
    except (ImageError, subprocess.SubprocessError, OSError) as exc:
        sys.exit(f"error: {exc}")
