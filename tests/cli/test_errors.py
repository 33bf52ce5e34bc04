"""Every user mistake is ONE `error:` line on stderr and a non-zero exit, never a traceback;
every command has --help with an example."""
from __future__ import annotations

import argparse

import pytest

from mlportal_cli.main import build_parser
from tests.cli.conftest import assert_one_error_line


def _leaf_commands(parser, path=()):
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield path
        return
    for action in actions:
        seen = set()
        for name, sub in action.choices.items():
            if id(sub) not in seen:
                seen.add(id(sub))
                yield from _leaf_commands(sub, (*path, name))


LEAVES = list(_leaf_commands(build_parser()))


def test_there_is_a_command_for_each_of_the_labs_az_ml_lines():
    for line in ("experiment prepare", "experiment submit", "account modelmanagement list",
                 "account modelmanagement set", "account modelmanagement show", "account modelmanagement create",
                 "env setup", "env list", "env set", "env show", "service create", "service run"):
        assert tuple(line.split()) in LEAVES


@pytest.mark.parametrize("command", LEAVES, ids=[" ".join(c) for c in LEAVES])
def test_every_command_has_help_with_an_example(cli, command):
    outcome = cli(*command, "--help")
    assert outcome.code == 0
    assert outcome.out.startswith("usage: mlportal ")
    example = outcome.out.split("\nexample:\n", 1)[1]
    assert f"  mlportal {' '.join(command)}" in example


def test_a_bad_argument_is_one_line_pointing_to_help(cli):
    outcome = cli("run", "list", "--top", "many")
    assert_one_error_line(outcome, contains="argument --top: invalid int value: 'many' (see 'mlportal run list --help')")
    assert outcome.code == 2
    assert_one_error_line(cli("projekt", "list"), contains="invalid choice: 'projekt'")


def test_a_missing_required_option_is_one_line(cli):
    assert_one_error_line(cli("env", "setup", "-l", "eastus2"), contains="the following arguments are required: -n/--name")


def test_an_unreachable_portal_is_one_line_naming_it(cli, monkeypatch):
    monkeypatch.setenv("MLPORTAL_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("MLPORTAL_TOKEN", "mlp_whatever")
    outcome = cli("model", "list")
    assert_one_error_line(outcome, contains="error: cannot reach the portal at http://127.0.0.1:1: Connection refused")
    assert outcome.code == 1


def test_a_server_that_is_not_a_portal_is_one_line(cli, monkeypatch, live_server):
    monkeypatch.setenv("MLPORTAL_URL", live_server.url + "/static")
    monkeypatch.setenv("MLPORTAL_TOKEN", "mlp_whatever")
    assert_one_error_line(cli("workspace", "list"), contains="is this an MLPortal URL?")


def test_unknown_names_print_the_servers_message(cli, login, owner, workspace):
    login(owner)
    for argv, message in ((("model", "show", "nosuch.pkl"), "error: Not found: no model 'nosuch.pkl' in your workspaces."),
                          (("project", "show", "nosuch"), "error: Not found: no project 'nosuch' in your workspaces."),
                          (("env", "show", "-n", "nosuch"), "error: Not found: no environment 'nosuch'"),
                          (("service", "show", "realtime", "-i", "nosuch"), "error: Not found: no service 'nosuch'")):
        assert_one_error_line(cli(*argv), contains=message)


def test_a_readers_write_is_refused_with_the_role_it_needs(cli, login, reader, workspace):
    login(reader)
    assert_one_error_line(cli("project", "create", "mine"),
                          contains="error: This needs the contributor role in workspace 'team'; you are a reader.")


def test_azure_only_flags_are_accepted_and_noted_once_each(cli, login, owner, workspace):
    login(owner)
    outcome = cli("workspace", "list", "-g", "rg", "--subscription", "sub-1", "-l", "westus")
    assert outcome.code == 0
    assert outcome.err_lines == ["note: -g/--resource-group is an Azure setting; ignored here",
                                 "note: -l/--location is an Azure setting; ignored here",
                                 "note: --subscription is an Azure setting; ignored here"]


def test_options_after_the_script_belong_to_the_script():
    from mlportal_cli.commands.projects import split_script_args

    assert split_script_args(["experiment", "submit", "-c", "local", "--no-wait", "train.py", "--n", "3", "-c", "x"]) == (
        ["experiment", "submit", "-c", "local", "--no-wait", "train.py"], ["--n", "3", "-c", "x"])
    assert split_script_args(["experiment", "submit", "--", "-odd.py", "a"]) == (
        ["experiment", "submit", "--", "-odd.py"], ["a"])
    assert split_script_args(["run", "list", "--top", "3"]) == (["run", "list", "--top", "3"], None)
