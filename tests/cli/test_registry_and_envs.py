"""`model register|list|show|download`, `manifest create|list|show` and `env setup|list|set|show|delete`
against the portal (no Docker needed: nothing here builds or starts a container)."""
from __future__ import annotations

import hashlib
import json

import pytest

from mlportal_runtime.schema import generate_schema
from tests.cli.conftest import assert_one_error_line

SCORE = "def init():\n    pass\n\n\ndef run(data):\n    return data['x'] * 2\n"


@pytest.fixture
def service_files(cli):
    """A model file, score.py and service_schema.json in the working folder."""
    (cli.home / "model.pkl").write_bytes(b"not really a pickle" * 10)
    (cli.home / "score.py").write_text(SCORE)
    def run(data):  # the schema records the scoring function's name: score.py's run()
        return data["x"] * 2

    generate_schema(run, inputs={"data": {"x": 1.5}}, filepath=cli.home / "service_schema.json")
    return cli.home


def test_model_register_uploads_versions_with_tags_and_lists_them(cli, login, owner, workspace, service_files):
    login(owner)
    first = cli("model", "register", "-m", "model.pkl", "-n", "model.pkl", "-t", "stage=dev", "-d", "first", "-o", "json")
    assert first.code == 0, first.err
    model = json.loads(first.out)
    assert (model["ref"], model["tags"], model["description"]) == ("model.pkl:1", {"stage": "dev"}, "first")
    assert "Registered model model.pkl:1" in first.err
    second = cli("model", "register", "--model-file", "model.pkl")  # the name defaults to the file's
    assert second.code == 0, second.err
    table = cli("model", "list").out.splitlines()
    assert table[0].split()[:3] == ["Name", "Version", "Ref"]
    assert [line.split()[2] for line in table[2:]] == ["model.pkl:2", "model.pkl:1"]
    assert json.loads(cli("model", "show", "model.pkl", "-o", "json", "--query", "version").out) == 2
    assert json.loads(cli("model", "show", "-i", "model.pkl:1", "-o", "json", "--query", "tags").out) == {"stage": "dev"}


def test_model_download_saves_the_file_with_its_checksum(cli, login, owner, workspace, service_files):
    login(owner)
    cli("model", "register", "-m", "model.pkl")
    outcome = cli("model", "download", "model.pkl:1", "-d", "got", "-o", "json")
    assert outcome.code == 0, outcome.err
    saved = (cli.home / "got" / "model.pkl").read_bytes()
    assert saved == (cli.home / "model.pkl").read_bytes()
    assert json.loads(outcome.out)["sha256"] == hashlib.sha256(saved).hexdigest()


def test_model_register_without_a_file_says_what_to_give(cli, login, owner, workspace):
    login(owner)
    assert_one_error_line(cli("model", "register", "-n", "m"), contains="give the model file with -m/--model FILE")
    assert_one_error_line(cli("model", "register", "-m", "missing.pkl"), contains="-m/--model missing.pkl: no such file")


def test_manifest_create_bundles_local_files_and_model_versions(cli, login, owner, workspace, service_files):
    login(owner)
    cli("model", "register", "-m", "model.pkl")
    (service_files / "requirements.txt").write_text("numpy\n")
    outcome = cli("manifest", "create", "-n", "scorer", "-f", "score.py", "-r", "python", "-s", "service_schema.json",
                  "-i", "model.pkl:1", "-p", "requirements.txt", "-o", "json")
    assert outcome.code == 0, outcome.err
    manifest = json.loads(outcome.out)
    assert manifest["ref"] == "scorer:1" and [m["ref"] for m in manifest["models"]] == ["model.pkl:1"]
    assert sorted(manifest["files"]) == ["requirements.txt", "score.py", "service_schema.json"]
    assert cli("manifest", "list", "-o", "tsv", "--query", "[].ref").out == "scorer:1\n"
    assert json.loads(cli("manifest", "show", "scorer", "-o", "json", "--query", "runtime").out) == "python"


def test_a_manifest_with_a_broken_schema_is_refused_in_one_line(cli, login, owner, workspace, service_files):
    login(owner)
    cli("model", "register", "-m", "model.pkl")
    (service_files / "bad.json").write_text("{not json")
    outcome = cli("manifest", "create", "-n", "bad", "-f", "score.py", "-s", "bad.json", "-i", "model.pkl:1")
    assert outcome.code == 1 and outcome.err_lines[-1].startswith("error: ")
    assert cli("manifest", "list", "-o", "json").out.strip() == "[]"


def test_env_setup_set_and_show_follow_the_lab(cli, login, owner, workspace):
    login(owner)
    setup = cli("env", "setup", "-l", "eastus2", "-n", "staging", "-g", "my-rg")
    assert setup.code == 0, setup.err
    assert "note: -l/--location is an Azure setting; ignored here" in setup.err
    assert_one_error_line(cli("env", "show"), contains="No active environment in workspace 'team'")
    assert cli("env", "set", "-n", "staging", "-g", "my-rg").code == 0
    shown = json.loads(cli("env", "show", "-o", "json").out)
    assert (shown["name"], shown["kind"], shown["active"]) == ("staging", "local", True)
    table = cli("env", "list", "-o", "table").out.splitlines()
    assert table[0].split()[:3] == ["Name", "Kind", "Active"] and table[2].split()[:3] == ["staging", "local", "*"]


def test_env_delete_removes_it(cli, login, owner, workspace):
    login(owner)
    cli("env", "setup", "-n", "staging")
    assert cli("env", "delete", "-n", "staging").code == 0
    assert cli("env", "list", "-o", "json").out.strip() == "[]"


def test_another_workspaces_models_and_environments_are_invisible(cli, login, owner, workspace, outsider, service_files):
    login(owner)
    cli("model", "register", "-m", "model.pkl")
    cli("env", "setup", "-n", "staging")
    login(outsider)
    assert cli("model", "list", "-o", "json").out.strip() == "[]"
    assert cli("env", "list", "-o", "json").out.strip() == "[]"
    assert_one_error_line(cli("model", "show", "model.pkl"), contains="no model 'model.pkl'")
    assert_one_error_line(cli("model", "download", "model.pkl"), contains="no model 'model.pkl'")
