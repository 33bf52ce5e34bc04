"""The shared environment image: the lab's ``az ml experiment prepare -c docker``.

base image + a virtualenv at /opt/venv holding the requirements (installed offline from the
wheel cache in a build stage, so the final image holds no wheel and no pip cache) + the runtime
packages (``mlportal_runtime``, ``azureml``) at /opt/mlportal/lib on PYTHONPATH, precompiled, with
``mlportal_runtime/sitecustomize.py`` at its root (it appends the ``mlflow`` shim to the END of
sys.path, so a real MLflow in the environment always wins) +
a non-root user ``mlportal`` (uid 1000) + WORKDIR /workspace.

The tag is a content hash of the base image id, the normalised requirements, the runtime files
and this Dockerfile template, so an image is built once per environment and reused by every run
and every service built on top of it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from compute import _archive
from compute._build import build_image
from compute.engine import LABEL_ID, LABEL_KIND, BuildError, connect, image_id
from compute.wheels import SourceBuild, ensure_wheels, file_lock, normalise_requirements

ENV_REPOSITORY = "mlportal-env"
RUNTIME_PACKAGES = ("mlportal_runtime", "azureml")
# What the runtime packages import beyond the standard library, installed into every
# environment's venv with the project's own requirements (the scoring server's HTTP framing).
RUNTIME_REQUIREMENTS = ("httptools>=0.6.4,<1",)
RUNTIME_DIR = "/opt/mlportal/lib"
RUN_USER = "mlportal"
RUN_UID = 1000

# Image names the callers may hand us (repository[:tag] or an image id): they end up in FROM.
IMAGE_REF_RE = re.compile(
    r"^(?:sha256:[0-9a-f]{64}"
    r"|[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:[._-]{1,2}[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?)$"
)

# A fixed template: only validated image references are substituted, never user text.
# Requirements travel in requirements.txt, wheels in wheels/. PORTAL_LABEL right after each FROM
# labels every image the build makes with the portal that built it, the build stage's (left
# untagged: a dangling image the size of the venv) and the step images of a failed build
# included, so retention prunes them (compute.images.prune_dangling), and only them.
# (No braces around the variable: the template goes through str.format.)
PORTAL_LABEL = "ARG MLPORTAL_PORTAL=\nLABEL mlportal.portal=$MLPORTAL_PORTAL\n"
PORTAL_ARG = "MLPORTAL_PORTAL"
DOCKERFILE = """\
FROM {base} AS build
""" + PORTAL_LABEL + """\
COPY requirements.txt /tmp/mlportal-build/requirements.txt
COPY wheels/ /tmp/mlportal-build/wheels/
RUN python3 -m venv /opt/venv \\
 && if [ -s /tmp/mlportal-build/requirements.txt ]; then \\
      PIP_CONFIG_FILE=/dev/null /opt/venv/bin/python -m pip install --no-index --no-cache-dir \\
        --disable-pip-version-check --find-links /tmp/mlportal-build/wheels \\
        -r /tmp/mlportal-build/requirements.txt; \\
    fi

FROM {base}
""" + PORTAL_LABEL + """\
COPY --from=build /opt/venv /opt/venv
# runtime/: the runtime packages and sitecustomize.py, which appends the mlflow shim after site-packages
COPY runtime/ {runtime_dir}/
RUN python3 -m compileall -q {runtime_dir} \\
 && (id -u {user} >/dev/null 2>&1 || useradd --uid {uid} --non-unique --create-home --shell /bin/sh {user}) \\
 && mkdir -p /workspace && chown {user}:{user} /workspace \\
 && rm -rf /root/.cache/pip /tmp/mlportal-build
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PYTHONPATH={runtime_dir} \\
    PYTHONUNBUFFERED=1 \\
    LANG=C.UTF-8
WORKDIR /workspace
USER {user}
"""


def check_image_ref(ref: str) -> str:
    """Returns ``ref`` when it is a plain image reference (``name[:tag]`` or ``sha256:<id>``);
    raises ValueError otherwise, before it could reach a Dockerfile line."""
    if not isinstance(ref, str) or len(ref) > 255 or not IMAGE_REF_RE.match(ref):
        raise ValueError(f"{ref!r} is not a valid image name (expected name[:tag])")
    return ref


def with_runtime_requirements(requirements: list[str]) -> list[str]:
    """Returns ``requirements`` normalised, with the runtime's own (RUNTIME_REQUIREMENTS) added."""
    return normalise_requirements([*requirements, *RUNTIME_REQUIREMENTS])


def runtime_package_dirs() -> list[Path]:
    """Returns the folders of the runtime packages that every image carries; raises BuildError
    when one is missing from this installation."""
    dirs = []
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise BuildError(f"the runtime package {name!r} is missing from this installation; "
                             f"reinstall MLPortal", step="collect runtime")
        dirs.append(Path(next(iter(spec.submodule_search_locations))))
    return dirs


def runtime_site_file() -> Path:
    """The sitecustomize.py that goes to the root of the runtime folder (see the module docstring)."""
    return runtime_package_dirs()[0] / "sitecustomize.py"


def _runtime_digest(dirs: list[Path]) -> str:
    digest = hashlib.sha256()
    for root in dirs:
        for path in _archive.tree_files(root):
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _base_image_identity(base_image: str, base_url: str | None) -> str:
    """Returns the base image's id when the engine has it, else its name."""
    return image_id(base_image, base_url=base_url) or base_image


def env_image_tag(*, base_image: str, requirements: list[str], base_url: str | None = None) -> str:
    """Returns ``mlportal-env:<16 hex>``, the tag of the environment image for this base image
    and requirement set (order, comments and duplicates in ``requirements`` do not matter).
    Asks the engine for the base image's id (EngineError when unreachable); RequirementsError
    for a malformed requirement; ValueError for a malformed base image name."""
    check_image_ref(base_image)
    reqs = with_runtime_requirements(requirements)
    digest = hashlib.sha256()
    for part in (_base_image_identity(base_image, base_url), "\n".join(reqs),
                 _runtime_digest(runtime_package_dirs()), DOCKERFILE):
        digest.update(part.encode())
        digest.update(b"\0")
    return f"{ENV_REPOSITORY}:{digest.hexdigest()[:16]}"


def _write_context(out, *, base_image: str, reqs: list[str], wheels: list[Path]) -> None:
    with tarfile.open(fileobj=out, mode="w") as tar:
        dockerfile = DOCKERFILE.format(base=base_image, runtime_dir=RUNTIME_DIR, user=RUN_USER,
                                       uid=RUN_UID)
        _archive.add_bytes(tar, "Dockerfile", dockerfile.encode())
        _archive.add_bytes(tar, "requirements.txt", "".join(f"{r}\n" for r in reqs).encode())
        _archive.add_dir(tar, "wheels")
        _archive.add_bytes(tar, "wheels/.keep", b"")
        for wheel in wheels:
            tar.add(wheel, arcname=f"wheels/{wheel.name}", recursive=False)
        _archive.add_dir(tar, "runtime")
        for root in runtime_package_dirs():
            _archive.add_tree(tar, root, f"runtime/{root.name}")
        _archive.add_bytes(tar, "runtime/sitecustomize.py", runtime_site_file().read_bytes())
    out.seek(0)


def ensure_env_image(*, base_image: str, requirements: list[str], wheel_cache: Path,
                     log: Callable[[str], None], base_url: str | None = None,
                     timeout_s: int = 3600, source_packages: bool = False, portal: str = "") -> str:
    """Returns the tag of the environment image, building it first when the engine lacks it
    (the build log goes to ``log`` line by line; an existing image returns at once). Raises
    RequirementsError (a BuildError) for requirements pip cannot find, BuildError for a failed
    build, EngineError for engine failures."""
    check_image_ref(base_image)
    reqs = with_runtime_requirements(requirements)
    tag = env_image_tag(base_image=base_image, requirements=reqs, base_url=base_url)
    if image_id(tag, base_url=base_url):
        log(f"environment image {tag} is ready (reused)")
        return tag
    wheel_cache = Path(wheel_cache).expanduser()
    # Two workers preparing the same environment build it once.
    with file_lock(wheel_cache / f".{tag.replace(':', '-')}.lock"):
        if image_id(tag, base_url=base_url):
            log(f"environment image {tag} is ready (built by another worker)")
            return tag
        log(f"preparing environment image {tag} from {base_image} "
            f"with {len(reqs)} requirement(s)")
        # Wheels only; with source_packages (an administrator's choice) a package without a wheel is
        # built in a container of the same base image without network.
        wheels = ensure_wheels(reqs, cache_dir=wheel_cache, log=log,
                               source_build=SourceBuild(base_image, base_url, portal) if source_packages else None)
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as context:
            _write_context(context, base_image=base_image, reqs=reqs, wheels=wheels)
            with connect(base_url, timeout=timeout_s + 60) as client:
                build_image(client, context=context, tag=tag,
                            labels={LABEL_KIND: "env", LABEL_ID: tag.split(":", 1)[1]},
                            log=log, timeout_s=timeout_s, base_url=base_url,
                            buildargs={PORTAL_ARG: portal} if portal else None)
    log(f"environment image {tag} is ready (built)")
    return tag

