"""Session fixtures for the compute tests: a real Docker engine and environment images shared by
every test (built once per content hash and kept in the engine's store between sessions)."""

from __future__ import annotations

import time

import pytest

from compute.engine import engine_status
from tests.compute.fixtures import (
    SKLEARN_REQUIREMENTS,
    SMALL_REQUIREMENTS,
    prepare_env,
)
from tests.real_parts import missing_part


@pytest.fixture(scope="session")
def docker_engine():
    status = engine_status()
    if not status["ok"]:
        missing_part("Docker engine", status["error"])
    return status


@pytest.fixture(scope="session")
def small_env(docker_engine):
    """The environment image with the small requirement set (six)."""
    tag, seconds = prepare_env(SMALL_REQUIREMENTS)
    return {"tag": tag, "seconds": seconds}


@pytest.fixture(scope="session")
def sklearn_env(docker_engine):
    """The environment image with numpy, pandas and scikit-learn (the lab's churn project)."""
    lines: list[str] = []
    tag, seconds = prepare_env(SKLEARN_REQUIREMENTS, log=lines.append)
    return {"tag": tag, "seconds": seconds, "log": lines}


@pytest.fixture
def recorder():
    """Collects on_output lines with the time each arrived."""

    class Recorder:
        def __init__(self) -> None:
            self.lines: list[tuple[float, str]] = []

        def __call__(self, line: str) -> None:
            self.lines.append((time.monotonic(), line))

        @property
        def text(self) -> list[str]:
            return [line for _, line in self.lines if not line.startswith("[prepare]")]

        def at(self, needle: str) -> float:
            return next(t for t, line in self.lines if needle in line)

    return Recorder()
