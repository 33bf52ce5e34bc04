"""What a script printed never drives the owner's terminal (issue 13): the portal drops ANSI/OSC
sequences and control characters from run logs as it stores them, and `mlportal run logs`
escapes whatever control character still comes (a log an older portal stored raw)."""
from __future__ import annotations

import pytest

from runs.models import Run, RunLogChunk

pytestmark = pytest.mark.integration

HOSTILE = 'print("title \\x1b]0;owned\\x07 clear \\x1b[2J back\\rforged \\x9b2J \\u202eevil", flush=True)\n'


@pytest.fixture
def project_folder(cli, login, owner, workspace, local_runs, celery_worker):
    login(owner)
    outcome = cli("project", "create", "tiny")
    assert outcome.code == 0, outcome.err
    (cli.home / "hostile.py").write_text(HOSTILE)
    return cli.home


def test_a_runs_control_characters_never_reach_the_terminal(cli, project_folder):
    outcome = cli("experiment", "submit", "-c", "local", "hostile.py")
    assert outcome.code == 0, outcome.err
    assert "title  clear  backforged 2J evil" in outcome.out
    run = Run.objects.get()
    # A log an older portal stored raw is escaped by the CLI all the same.
    RunLogChunk.objects.create(run=run, workspace_id=run.workspace_id, seq=99, text="old \x1b[31mred\x1b[0m\rx\n")
    printed = cli("run", "logs", "tiny#1").out
    assert "old \\x1b[31mred\\x1b[0m\\x0dx" in printed
    for text in (outcome.out, printed):
        assert not any(ch in text for ch in "\x1b\x07\r\x9b\u202e")
