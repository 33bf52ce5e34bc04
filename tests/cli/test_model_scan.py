"""`mlportal model show|list|accept` with scan verdicts, and `manifest create --confirm-unknown`, against
the portal: the terminal user sees what the scan found and what to do about it."""
from __future__ import annotations

import json
import pickle

from tests.cli.conftest import assert_one_error_line
from tests.cli.test_registry_and_envs import service_files  # noqa: F401 (fixture)
from tests.registry.test_scanning import OsSystem

UNKNOWN_PICKLE = b"\x80\x04\x8c\x0cmylab.models\x8c\x06Ranker\x93)\x81."


def test_model_show_and_list_tell_the_verdict_and_globals_of_a_canary(cli, login, owner, workspace, service_files,
                                                                       tmp_path):
    login(owner)
    (service_files / "model.pkl").write_bytes(pickle.dumps(OsSystem(tmp_path / "ran")))
    registered = cli("model", "register", "-m", "model.pkl", "-n", "barscanary")
    assert registered.code == 0, registered.err
    assert "scan of barscanary:1: dangerous" in registered.err and "mlportal model accept barscanary:1" in registered.err
    shown = cli("model", "show", "barscanary:1").out
    assert "scan.verdict" in shown and "dangerous" in shown and "posix.system" in shown
    assert "framework" in shown and "scikit-learn" not in shown
    table = cli("model", "list").out.splitlines()
    assert "Scan" in table[0].split() and "dangerous" in table[2]
    assert not (tmp_path / "ran").exists()


def test_model_accept_lets_the_manifest_through_and_contributors_are_refused(cli, login, owner, contributor, workspace,
                                                                            service_files, tmp_path):
    login(owner)
    (service_files / "model.pkl").write_bytes(pickle.dumps(OsSystem(tmp_path / "ran")))
    cli("model", "register", "-m", "model.pkl", "-n", "barscanary")
    args = ("manifest", "create", "-n", "scorer", "-f", "score.py", "-s", "service_schema.json", "-i", "barscanary:1")
    refused = cli(*args)
    assert_one_error_line(refused, contains="is dangerous: it names posix.system")
    login(contributor)
    assert_one_error_line(cli("model", "accept", "barscanary:1"), contains="This needs the owner role")
    login(owner)
    accepted = cli("model", "accept", "barscanary:1", "-o", "json")
    assert accepted.code == 0, accepted.err
    assert json.loads(accepted.out)["scan"]["accepted_by"] == "olivia"
    assert cli(*args).code == 0


def test_manifest_create_takes_an_unknown_version_with_confirm_unknown(cli, login, owner, workspace, service_files):
    login(owner)
    (service_files / "model.pkl").write_bytes(UNKNOWN_PICKLE)
    cli("model", "register", "-m", "model.pkl", "-n", "ranker")
    args = ("manifest", "create", "-n", "scorer", "-f", "score.py", "-s", "service_schema.json", "-i", "ranker:1")
    assert_one_error_line(cli(*args), contains="--confirm-unknown")
    made = cli(*args, "--confirm-unknown")
    assert made.code == 0, made.err


def test_service_create_realtime_refuses_a_canary_and_asks_to_confirm_an_unknown_file(
        cli, login, owner, workspace, service_files, tmp_path):
    # The third way a file is registered (issue 20): the one-shot, from the terminal. Nothing of a
    # refused one-shot is kept, and the canary never ran.
    from deployments.models import Service
    from registry.models import Image, Manifest, Model

    login(owner)
    (service_files / "model.pkl").write_bytes(pickle.dumps(OsSystem(tmp_path / "ran")))
    args = ("service", "create", "realtime", "-n", "barscanary", "--model-file", "model.pkl", "-f", "score.py",
            "-s", "service_schema.json")
    refused = cli(*args)
    assert_one_error_line(refused, contains="posix.system")
    assert "mlportal model accept" in refused.err
    assert (Model.objects.count(), Manifest.objects.count(), Image.objects.count(), Service.objects.count()) == (0, 0, 0, 0)
    assert not (tmp_path / "ran").exists()
    (service_files / "model.pkl").write_bytes(UNKNOWN_PICKLE)
    assert_one_error_line(cli(*args), contains="--confirm-unknown")
    assert Model.objects.count() == 0 and Service.objects.count() == 0
