"""`mlportal service export -n S --format kubernetes` (issue 19) against the real portal."""
from __future__ import annotations

import yaml

from tests.cli.conftest import assert_one_error_line
from tests.deployments.test_kubernetes_export import keys_only_in_secret, service, validate_all  # noqa: F401 (fixture)


def test_the_cli_writes_the_manifests_to_stdout_and_to_a_file(cli, login, owner, service, tmp_path):
    login(owner)
    outcome = cli("service", "export", "-n", "churnsvc", "--format", "kubernetes")
    assert outcome.code == 0, outcome.err
    objects = [doc for doc in yaml.safe_load_all(outcome.out) if doc]
    validate_all(objects)
    keys_only_in_secret(objects)
    target = tmp_path / "churnsvc.yaml"
    outcome = cli("service", "export", "-n", "churnsvc", "--format", "kubernetes", "--file", target)
    assert outcome.code == 0, outcome.err
    assert f"Wrote {target}" in outcome.err and "kubectl apply -f" in outcome.err
    assert [d for d in yaml.safe_load_all(target.read_text()) if d] == objects
    assert not (tmp_path / "churnsvc.yaml.part").exists()


def test_the_cli_says_what_is_wrong_in_one_line(cli, login, owner, service, tmp_path):
    login(owner)
    assert_one_error_line(cli("service", "export", "-n", "nosuch", "--format", "kubernetes"),
                          contains="error: Not found: no service 'nosuch'")
    outcome = cli("service", "export", "-n", "churnsvc", "--format", "helm")
    assert outcome.code != 0 and "invalid choice: 'helm'" in outcome.err and "kubernetes" in outcome.err
    missing = tmp_path / "no-such-folder" / "out.yaml"
    assert_one_error_line(cli("service", "export", "-n", "churnsvc", "--format", "kubernetes", "--file", missing),
                          contains=f"error: cannot write {missing}")
    assert not missing.parent.exists()
