"""The current folder is the project: `project create --template churn` writes the template's files
into it and links it; `project download` does the same for an existing project; `project upload`
sends the folder (minus .mlportalignore) as the project's files."""
from __future__ import annotations

import json

from runs.catalog import get_template
from runs.models import Project
from tests.cli.conftest import assert_one_error_line

CHURN = get_template("churn")


def test_project_create_with_the_churn_template_writes_its_files_and_links_the_folder(cli, login, portal, owner, workspace):
    login(owner)
    folder = cli.home / "churn"
    folder.mkdir()
    outcome = cli("project", "create", "churn_prediction", "--template", "churn", "-o", "json", cwd=folder)
    assert outcome.code == 0, outcome.err
    project = Project.objects.get(name="churn_prediction", workspace=workspace)
    assert project.template == "churn"
    assert sorted(json.loads(outcome.out)["files"]) == sorted(CHURN.files)
    for rel in CHURN.files:
        assert (folder / rel).read_bytes() == CHURN.file_path(rel).read_bytes(), rel
    assert json.loads((folder / ".mlportal" / "project.json").read_text()) == {
        "server": portal, "workspace": "team", "project": "churn_prediction", "project_id": str(project.pk)}
    shown = cli("project", "show", "-o", "json", cwd=folder / "data")  # from a subfolder too
    assert json.loads(shown.out)["folder"] == str(folder)


def test_project_create_with_path_makes_the_folder(cli, login, owner, workspace):
    login(owner)
    assert cli("project", "create", "-n", "empty", "--path", "new/place").code == 0
    assert (cli.home / "new" / "place" / ".mlportal" / "project.json").is_file()


def test_an_unknown_template_is_one_line_and_creates_nothing(cli, login, owner, workspace):
    login(owner)
    outcome = cli("project", "create", "p1", "--template", "nosuch")
    assert_one_error_line(outcome, contains="error: Unknown template 'nosuch': use one of churn")
    assert not Project.objects.exists()
    assert not (cli.home / ".mlportal").exists()


def test_a_folder_already_linked_to_another_project_is_refused_before_creating(cli, login, owner, workspace):
    login(owner)
    cli("project", "create", "first")
    assert_one_error_line(cli("project", "create", "second"), contains="is already the folder of project first")
    assert list(Project.objects.values_list("name", flat=True)) == ["first"]


def test_project_download_writes_an_existing_project_into_another_folder(cli, login, owner, workspace):
    login(owner)
    cli("project", "create", "churn_prediction", "--template", "churn")
    other = cli.home / "copy"
    outcome = cli("project", "download", "churn_prediction", "--path", other)
    assert outcome.code == 0, outcome.err
    assert (other / "score.py").read_bytes() == CHURN.file_path("score.py").read_bytes()
    assert json.loads((other / ".mlportal" / "project.json").read_text())["project"] == "churn_prediction"


def test_project_upload_replaces_the_projects_files_with_the_folder_minus_ignored_ones(cli, login, owner, workspace):
    login(owner)
    cli("project", "create", "p1")
    (cli.home / "train.py").write_text("print('hi')\n")
    (cli.home / "big.bin").write_bytes(b"x" * 10)
    (cli.home / ".mlportalignore").write_text("*.bin\n")
    (cli.home / "outputs").mkdir()
    (cli.home / "outputs" / "model.pkl").write_bytes(b"old")
    assert cli("project", "upload").code == 0
    project = Project.objects.get(name="p1")
    assert sorted(project.files.values_list("path", flat=True)) == [".mlportalignore", "train.py"]
    (cli.home / "train.py").unlink()
    (cli.home / "eval.py").write_text("print('eval')\n")
    assert cli("project", "upload").code == 0
    assert sorted(project.files.values_list("path", flat=True)) == [".mlportalignore", "eval.py"]


def test_project_list_shows_the_current_workspaces_projects(cli, login, owner, workspace, outsider):
    login(owner)
    cli("project", "create", "p1", "--path", "a")
    cli("project", "create", "p2", "--path", "b")
    assert cli("project", "list", "-o", "tsv", "--query", "[].name").out == "p1\np2\n"
    assert cli("project", "list", "--search", "2", "-o", "tsv", "--query", "[].name").out == "p2\n"


def test_commands_that_need_a_project_say_how_to_name_one_outside_a_project_folder(cli, login, owner, workspace):
    login(owner)
    assert_one_error_line(cli("experiment", "submit", "-c", "docker", "train.py"),
                          contains="error: no project here: run this inside a project folder")
    assert_one_error_line(cli("project", "upload"), contains="no project here")


def test_an_outsider_cannot_download_or_see_the_project(cli, login, owner, workspace, outsider):
    login(owner)
    cli("project", "create", "secret")
    login(outsider)
    assert_one_error_line(cli("project", "download", "secret", "--path", "x"), contains="no project 'secret'")
    assert cli("project", "list", "-o", "json").out.strip() == "[]"


def test_a_folder_linked_on_another_portal_is_not_used_with_this_login(cli, login, owner, workspace):
    login(owner)
    cli("project", "create", "p1")
    link = cli.home / ".mlportal" / "project.json"
    link.write_text(json.dumps(json.loads(link.read_text()) | {"server": "http://other.example:8000"}))
    assert_one_error_line(cli("experiment", "submit", "-c", "local", "train.py"),
                          contains="error: this folder is linked to a project on http://other.example:8000")
