import io

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def _run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()


def test_create_api_token_prints_a_working_token_for_an_existing_user(owner, workspace):
    secret = _run("create_api_token", "olivia", "--name", "ci")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/me/").json()["username"] == "olivia"
    assert owner.api_tokens.get().name == "ci"


def test_create_api_token_refuses_an_unknown_user_unless_asked_to_create_it():
    with pytest.raises(CommandError, match="--create"):
        _run("create_api_token", "nobody")
    secret = _run("create_api_token", "robot", "--create")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    me = client.get("/api/v1/me/").json()
    assert me["username"] == "robot" and me["workspace"] == "robot" and me["role"] == "owner"


def test_bootstrap_creates_the_first_admin_once_and_says_how_to_log_in(settings, monkeypatch):
    monkeypatch.setenv("MLPORTAL_ADMIN_PASSWORD", "first-admin-pw-9")
    first = _run("bootstrap")
    assert "log in as 'admin' with password 'first-admin-pw-9'" in first
    again = _run("bootstrap")
    assert "exists" in again
    from django.contrib.auth import get_user_model

    assert get_user_model().objects.filter(username="admin", is_superuser=True).count() == 1
