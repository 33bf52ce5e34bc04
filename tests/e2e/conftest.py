"""Fixtures for the end-to-end tests: the live portal (`live_server`) with the real worker
(`celery_worker`) and Docker engine, and terminals that run the `mlportal` command as a person
would: a subprocess in a folder of its own, with its own login (MLPORTAL_CONFIG)."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from workspaces import services
from tests.real_parts import missing_part

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mlportal_bin(tmp_path_factory) -> Path:
    """A folder holding an `mlportal` executable, to put first on PATH: the installed console script
    (`pip install -e .`), else a shim running `python -m mlportal_cli` from this checkout."""
    folder = tmp_path_factory.mktemp("bin")
    installed = Path(sys.executable).with_name("mlportal")
    shim = folder / "mlportal"
    if installed.is_file():
        shim.symlink_to(installed)
    else:
        shim.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}" '
                        f'exec "{sys.executable}" -m mlportal_cli "$@"\n')
        shim.chmod(0o755)
    return folder


@dataclass
class Terminal:
    """A shell in `cwd` where `mlportal` is on PATH and the login is this terminal's own."""

    cwd: Path
    env: dict[str, str]

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["mlportal", *argv], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def ok(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        done = self.run(*argv, timeout=timeout)
        assert done.returncode == 0, (f"mlportal {' '.join(argv)} exited {done.returncode}\n"
                                      f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def shell(self, line: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Runs a line pasted as it is into bash (quotes and all)."""
        return subprocess.run(["bash", "-c", line], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture
def terminal(tmp_path, mlportal_bin, live_server):
    """terminal(user, folder_name) -> a Terminal logged in as `user` (a fresh API token)."""

    def open_terminal(user, name: str) -> Terminal:
        home = tmp_path / name
        (home / "work").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLPORTAL_")}
        env.update({"MLPORTAL_CONFIG": str(home / "config.json"), "HOME": str(home),
                    "PATH": f"{mlportal_bin}:{env.get('PATH', '/usr/bin:/bin')}", "PYTHONUNBUFFERED": "1"})
        term = Terminal(cwd=home / "work", env=env)
        _, secret = services.token_create(user=user, name="terminal")
        term.ok("login", "--url", live_server.url, "--token", secret)
        return term

    return open_terminal


@pytest.fixture
def docker_worker(celery_worker):
    """The real worker with a Docker engine; afterwards, no service container of this portal is left."""
    from compute.engine import engine_status

    status = engine_status()
    if not status["ok"]:
        missing_part("Docker engine", status["error"])
    yield celery_worker
    from compute.runner import list_containers, remove_container
    from deployments.worker import LABEL_PORTAL, portal_instance

    instance = portal_instance()
    for container in list_containers("service"):
        if container["labels"].get(LABEL_PORTAL) == instance:
            remove_container(container["id"])
