"""Service images: an environment image + the manifest's files + the scoring server.

The environment image already holds the dependencies, so the only layers built here are the
app files and their bytecode: a rebuild where only score.py changed takes a second or two.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Callable

import docker.errors

from compute import _archive
from compute._build import build_image
from compute.engine import LABEL_KIND, LABEL_PORTAL, connect, image_id
from compute.envimage import PORTAL_ARG, PORTAL_LABEL, RUN_USER, check_image_ref

SERVICE_PORT = 5001
APP_DIR = "/app"

# A fixed template: only the validated environment image reference is substituted.
DOCKERFILE = """\
FROM {env_image}
""" + PORTAL_LABEL + """\
USER root
COPY app/ {app_dir}/
RUN python -m compileall -q {app_dir}
ENV MLPORTAL_APP_DIR={app_dir}
EXPOSE {port}
USER {user}
CMD ["python", "-m", "mlportal_runtime.server", "--app-dir", "{app_dir}", "--port", "{port}", "--host", "0.0.0.0"]
"""


def _check_app_files(app_files: dict[str, bytes]) -> dict[str, bytes]:
    """Returns the files keyed by clean relative path; ValueError for an unsafe or duplicate
    name or non-bytes content."""
    clean: dict[str, bytes] = {}
    for name, data in app_files.items():
        path = _archive.clean_relative_path(name)
        if path in clean:
            raise ValueError(f"app file {name!r} is listed twice")
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"app file {name!r} must be bytes")
        clean[path] = bytes(data)
    return clean


def build_service_image(*, tag: str, env_image: str, app_files: dict[str, bytes],
                        labels: dict[str, str], log: Callable[[str], None],
                        timeout_s: int = 1800, base_url: str | None = None) -> dict:
    """Builds ``tag`` from ``env_image`` with ``app_files`` (relative path -> content) in /app
    and the scoring server as its command; returns ``{"id", "size"}``. The build log goes to
    ``log`` line by line. Raises ValueError for a bad tag, image or file name, BuildError
    naming the failing step (or "over its time limit" past ``timeout_s``), EngineError when
    the engine fails."""
    check_image_ref(tag)
    check_image_ref(env_image)
    files = _check_app_files(app_files)
    dockerfile = DOCKERFILE.format(env_image=env_image, app_dir=APP_DIR, port=SERVICE_PORT,
                                   user=RUN_USER)
    with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as context:
        made: set[str] = set()
        with tarfile.open(fileobj=context, mode="w") as tar:
            _archive.add_bytes(tar, "Dockerfile", dockerfile.encode())
            _archive.add_dir(tar, "app")
            made.add("app")
            for path in sorted(files):
                _archive.add_parents(tar, f"app/{path}".rsplit("/", 1)[0], made, uid=0, gid=0)
                _archive.add_bytes(tar, f"app/{path}", files[path])
        context.seek(0)
        with connect(base_url, timeout=timeout_s + 60) as client:
            built = build_image(client, context=context, tag=tag,
                                labels={LABEL_KIND: "image", **labels}, log=log,
                                timeout_s=timeout_s, base_url=base_url,
                                buildargs={PORTAL_ARG: labels[LABEL_PORTAL]} if labels.get(LABEL_PORTAL) else None)
            size = client.images.get(built).attrs.get("Size", 0)
    return {"id": built, "size": int(size)}


def remove_image(tag_or_id: str, *, base_url: str | None = None) -> bool:
    """Removes an image (the tag, and the image when no other tag holds it); returns False
    when there was no such image. Raises EngineError when a container still uses it."""
    with connect(base_url) as client:
        try:
            client.images.remove(tag_or_id, noprune=False)
        except docker.errors.NotFound:
            return False
    return True


def prune_dangling(*, label: str, value: str, base_url: str | None = None) -> tuple[int, int]:
    """Removes dangling (untagged) images labelled ``label=value`` (the layers a rebuild of a tag
    left behind, of one portal), never anyone else's; returns (images removed, bytes reclaimed)."""
    if not label or not value:
        raise ValueError("prune_dangling needs a label and a value: it never prunes every dangling image")
    with connect(base_url, timeout=300) as client:
        result = client.images.prune(filters={"dangling": True, "label": f"{label}={value}"})
    return len(result.get("ImagesDeleted") or []), int(result.get("SpaceReclaimed") or 0)


def image_info(ref: str, *, base_url: str | None = None) -> dict | None:
    """Returns ``{"id", "size", "portal"}`` of the image ``ref`` (a tag or an id; "portal" is the
    ``mlportal.portal`` label of the portal that built it, "" for none), or None when the engine lacks it."""
    with connect(base_url, timeout=30) as client:
        try:
            image = client.images.get(ref)
        except docker.errors.NotFound:
            return None
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    return {"id": image.id, "size": int(image.attrs.get("Size") or 0), "portal": labels.get(LABEL_PORTAL, "")}


def image_exists(tag: str, *, base_url: str | None = None) -> bool:
    """True when the engine has an image with this tag or id."""
    return image_id(tag, base_url=base_url) is not None
