"""Fixtures for the CLI tests: the `mlportal` command run in-process (`main(argv)` with stdout and
stderr captured) against the real portal (pytest-django's `live_server`), each test with its own
config file (MLPORTAL_CONFIG) and working folder."""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlportal_cli.main import main
from workspaces import services


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """cli(*argv, cwd=None, stdin=None) -> Outcome(code, out, err) of one `mlportal` command."""
    config = tmp_path / "config" / "mlportal" / "config.json"
    monkeypatch.setenv("MLPORTAL_CONFIG", str(config))
    for name in ("MLPORTAL_URL", "MLPORTAL_TOKEN", "MLPORTAL_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "work"
    home.mkdir()
    monkeypatch.chdir(home)

    def run(*argv: str, cwd: Path | None = None, stdin: str | None = None) -> Outcome:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        out, err = io.StringIO(), io.StringIO()
        code = main([str(a) for a in argv], out=out, err=err)
        return Outcome(code, out.getvalue(), err.getvalue())

    run.config = config
    run.home = home
    return run


@pytest.fixture
def portal(live_server, transactional_db) -> str:
    return live_server.url


@pytest.fixture
def login(cli, portal):
    """login(user) logs the CLI in as `user` with a fresh API token; returns the token."""

    def log_in(user) -> str:
        _, secret = services.token_create(user=user, name="cli tests")
        outcome = cli("login", "--url", portal, "--token", secret)
        assert outcome.code == 0, outcome.err
        return secret

    return log_in


def assert_one_error_line(outcome: Outcome, *, contains: str) -> None:
    """The CLI's contract for failures: exit non-zero, ONE `error:` line on stderr, no traceback."""
    assert outcome.code != 0
    errors = [line for line in outcome.err_lines if line.startswith("error")]
    assert len(errors) == 1 and outcome.err_lines[-1] == errors[0], outcome.err
    assert errors[0].startswith("error: ") and contains in errors[0], errors[0]
    assert "Traceback" not in outcome.err and "Traceback" not in outcome.out
