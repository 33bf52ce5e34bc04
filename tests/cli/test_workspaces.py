"""`workspace create|list|show|set` and the lab's `account modelmanagement list|show|set|create`,
with the output formats and --query."""
from __future__ import annotations

import json

from tests.cli.conftest import assert_one_error_line
from workspaces.selectors import current_workspace_and_role


def test_workspace_create_makes_the_user_its_owner_and_current(cli, login, owner, workspace):
    login(owner)
    outcome = cli("workspace", "create", "research", "-d", "Model experiments")
    assert outcome.code == 0, outcome.err
    assert "role         owner" in outcome.out
    assert current_workspace_and_role(owner)[0].name == "research"


def test_workspace_list_is_a_table_marking_the_current_one(cli, login, owner, workspace):
    login(owner)
    cli("workspace", "create", "research")
    lines = cli("workspace", "list").out.splitlines()
    assert lines[0].split()[:3] == ["Name", "Role", "Current"]
    assert lines[2].split()[:3] == ["research", "owner", "*"]
    assert lines[3].split()[:2] == ["team", "owner"] and "*" not in lines[3]


def test_workspace_set_switches_the_current_workspace(cli, login, owner, workspace):
    login(owner)
    cli("workspace", "create", "research")
    assert cli("workspace", "set", "team").code == 0
    assert current_workspace_and_role(owner)[0].name == "team"
    assert json.loads(cli("whoami", "-o", "json").out)["workspace"] == "team"


def test_workspace_show_defaults_to_the_current_one_and_lists_members(cli, login, owner, workspace, reader):
    login(owner)
    data = json.loads(cli("workspace", "show", "-o", "json").out)
    assert data["name"] == "team"
    assert sorted((m["username"], m["role"]) for m in data["members"]) == [("olivia", "owner"), ("rita", "reader")]


def test_output_formats_and_query_apply_to_lists(cli, login, owner, workspace):
    login(owner)
    cli("workspace", "create", "research")
    assert json.loads(cli("workspace", "list", "-o", "json", "--query", "[].name").out) == ["research", "team"]
    assert cli("workspace", "list", "-o", "tsv", "--query", "[].[name, role]").out == "research\towner\nteam\towner\n"
    assert cli("-o", "json", "workspace", "list", "--query", "length(@)").out.strip() == "2"


def test_another_users_workspace_is_not_found(cli, login, owner, workspace, outsider):
    login(owner)
    assert_one_error_line(cli("workspace", "show", "elsewhere"), contains="error: Not found: no workspace 'elsewhere'")
    assert_one_error_line(cli("workspace", "set", "elsewhere"), contains="no workspace 'elsewhere'")


def test_a_taken_name_prints_the_servers_message(cli, login, owner, workspace, outsider):
    login(owner)
    assert_one_error_line(cli("workspace", "create", "elsewhere"),
                          contains="error: A workspace named 'elsewhere' exists already: choose another name.")


def test_the_labs_account_modelmanagement_lines_work_on_workspaces(cli, login, owner, workspace):
    login(owner)
    created = cli("account", "modelmanagement", "create", "-l", "eastus2", "-n", "mma", "-g", "my-rg")
    assert created.code == 0, created.err
    assert "note: -l/--location is an Azure setting; ignored here" in created.err
    assert "note: -g/--resource-group is an Azure setting; ignored here" in created.err
    table = cli("account", "modelmanagement", "list", "-o", "table")
    assert [line.split()[0] for line in table.out.splitlines()[2:]] == ["mma", "team"]
    assert cli("account", "modelmanagement", "set", "-n", "team", "-g", "my-rg").code == 0
    shown = cli("account", "modelmanagement", "show", "-o", "json", "--query", "name")
    assert shown.out.strip() == '"team"'


def test_az_ml_lines_paste_with_the_ml_prefix(cli, login, owner, workspace):
    login(owner)
    outcome = cli("ml", "account", "modelmanagement", "list", "-o", "tsv", "--query", "[].name")
    assert outcome.code == 0 and outcome.out == "team\n"
