"""`mlportal login / logout / whoami`: the token is verified with /api/v1/me/ before it is saved,
the config file is readable by its owner only, and MLPORTAL_URL / MLPORTAL_TOKEN override it."""
from __future__ import annotations

import json
import stat

from tests.cli.conftest import assert_one_error_line
from workspaces import services


def test_login_verifies_the_token_and_saves_it_readable_by_the_owner_only(cli, portal, owner, workspace):
    _, secret = services.token_create(user=owner, name="laptop")
    outcome = cli("login", "--url", portal + "/", "--token", secret)
    assert outcome.code == 0, outcome.err
    assert f"Logged in to {portal} as olivia" in outcome.err
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.config.parent.stat().st_mode) == 0o700
    assert json.loads(cli.config.read_text()) == {"url": portal, "token": secret, "username": "olivia"}


def test_whoami_shows_the_portal_the_user_and_the_current_workspace(cli, login, portal, owner, workspace):
    login(owner)
    outcome = cli("whoami", "-o", "json")
    assert outcome.code == 0, outcome.err
    assert json.loads(outcome.out) == {"url": portal, "username": "olivia", "workspace": "team", "role": "owner",
                                       "config": str(cli.config)}


def test_a_wrong_token_prints_the_servers_message_and_saves_nothing(cli, portal, owner):
    outcome = cli("login", "--url", portal, "--token", "mlp_not-a-real-token")
    assert_one_error_line(outcome, contains="error: Invalid or revoked API token")
    assert not cli.config.exists()


def test_login_prompts_for_what_is_missing_and_takes_the_token_from_a_pipe(cli, portal, owner, workspace):
    _, secret = services.token_create(user=owner, name="piped")
    outcome = cli("login", stdin=f"{portal}\n{secret}\n")
    assert outcome.code == 0, outcome.err
    assert json.loads(cli.config.read_text())["token"] == secret


def test_an_address_that_is_not_a_url_is_refused_before_any_request(cli):
    assert_one_error_line(cli("login", "--url", "localhost:8000", "--token", "x"), contains="is not a portal URL")


def test_environment_variables_override_the_saved_login(cli, login, monkeypatch, portal, owner, outsider):
    login(owner)
    _, other = services.token_create(user=outsider, name="ci")
    monkeypatch.setenv("MLPORTAL_TOKEN", other)
    assert json.loads(cli("whoami", "-o", "json").out)["username"] == "oscar"
    monkeypatch.setenv("MLPORTAL_URL", "http://127.0.0.1:1")
    assert_one_error_line(cli("whoami"), contains="cannot reach the portal at http://127.0.0.1:1")


def test_logout_forgets_the_token_and_commands_then_ask_to_log_in(cli, login, owner, workspace):
    login(owner)
    assert cli("logout").code == 0
    assert "token" not in json.loads(cli.config.read_text())
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600
    assert_one_error_line(cli("whoami"), contains="not logged in: run 'mlportal login'")


def test_the_config_file_can_be_moved_with_MLPORTAL_CONFIG(cli, login, monkeypatch, tmp_path, owner, workspace):
    elsewhere = tmp_path / "other" / "cfg.json"
    monkeypatch.setenv("MLPORTAL_CONFIG", str(elsewhere))
    login(owner)
    assert elsewhere.is_file() and not cli.config.exists()
    assert "config     " + str(elsewhere) in cli("whoami").out


def test_login_without_a_token_and_nothing_piped_says_which_option_to_give(cli, portal):
    assert_one_error_line(cli("login", "--url", portal, stdin=""), contains="nothing was given for --token")


def test_token_create_list_and_revoke(cli, login, owner, workspace):
    login(owner)
    made = cli("token", "create", "ci", "--expires-days", "30", "--read-only", "-o", "json")
    assert made.code == 0, made.err
    import json

    data = json.loads(made.out)
    assert data["token"].startswith("mlp_") and data["read_only"] is True
    listed = cli("token", "list", "-o", "table")
    assert listed.code == 0 and "read-only" in listed.out and "never" in listed.out
    revoked = cli("token", "revoke", "ci")
    assert revoked.code == 0, revoked.err
    again = cli("token", "revoke", "ci")
    assert again.code == 1 and "no active token" in again.err


def test_every_create_sends_an_idempotency_key(cli, login, owner, workspace):
    from workspaces.models import IdempotencyKey

    login(owner)
    assert cli("workspace", "create", "second").code == 0
    assert cli("token", "create", "ci").code == 0
    keys = IdempotencyKey.objects.filter(scope=f"user:{owner.pk}", status_code=201)
    assert keys.count() == 2 and len(set(keys.values_list("key", flat=True))) == 2
