"""The base image for air-gapped sites: made offline with debootstrap when it cannot be pulled.

``debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates``
needs root and a reachable Debian mirror (a package repository, not an image registry); the
root filesystem is then imported as an image with ``docker import``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from compute.engine import EngineError, connect, image_id
from compute.envimage import check_image_ref

PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
IMPORT_CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/usr/bin/python3"]',
]


class BaseImageError(EngineError):
    """The base image could neither be pulled nor built here; the message says what to fix."""


def _stream(cmd: list[str], log: Callable[[str], None], *, timeout_s: int) -> tuple[int, list[str]]:
    """Runs ``cmd`` streaming its output lines to ``log``; returns (exit code, last lines)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    killer = threading.Timer(timeout_s, proc.kill)
    killer.start()
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail = (tail + [line])[-20:]
            log(line)
        return proc.wait(), tail
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def ensure_base_image(name: str, *, log: Callable[[str], None] = print,
                      base_url: str | None = None, suite: str = "bookworm",
                      mirror: str | None = None, timeout_s: int = 1800, debootstrap: str | None = None) -> str:
    """Returns the id of the image ``name``: at once when the engine has it, else after a pull,
    else after building it offline (debootstrap ``suite`` from ``mirror`` or Debian's default,
    then ``docker import``), with progress going to ``log``. ``debootstrap`` is the command to use
    (default: the one on PATH, else /usr/sbin/debootstrap). Raises BaseImageError when
    debootstrap is missing, not run as root or fails; EngineError when the engine fails."""
    check_image_ref(name)
    found = image_id(name, base_url=base_url)
    if found:
        log(f"base image {name} is present ({found[7:19]})")
        return found
    repository, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
    log(f"pulling {name}")
    try:
        with connect(base_url, timeout=600) as client:
            image = client.images.pull(repository, tag=tag)
            log(f"pulled {name}")
            return image.id
    except EngineError as exc:
        log(f"pull failed ({exc}); building {name} offline with debootstrap")

    debootstrap = debootstrap or shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise BaseImageError("debootstrap is not installed: install it (apt-get install "
                             "debootstrap) or load a base image into the engine")
    with tempfile.TemporaryDirectory(prefix="mlportal-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = [debootstrap, "--variant=minbase", f"--include={PACKAGES}", suite, str(rootfs)]
        if mirror:
            cmd.append(mirror)
        code, tail = _stream(cmd, log, timeout_s=timeout_s)
        if code != 0:
            last = next((line for line in reversed(tail) if line.strip()), "")
            hint = " (it must run as root)" if "root" in " ".join(tail).lower() else ""
            raise BaseImageError(f"debootstrap {suite} failed with code {code}{hint}: {last}",
                                 log_tail="\n".join(tail))
        # apt's downloaded packages are not part of the image
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        (rootfs / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True,
                                                                        exist_ok=True)
        log(f"importing the root filesystem as {name}")
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            with connect(base_url, timeout=timeout_s) as client:
                assert tar.stdout is not None
                client.api.import_image(src=tar.stdout, repository=repository, tag=tag,
                                        changes=IMPORT_CHANGES, stream_src=True)
        finally:
            if tar.poll() is None:
                tar.kill()
            tar.wait()
    found = image_id(name, base_url=base_url)
    if not found:
        raise BaseImageError(f"importing {name} finished but the engine has no such image")
    log(f"base image {name} is ready ({found[7:19]})")
    return found
