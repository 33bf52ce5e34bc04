"""Tokens expire (90 days by default, chosen at creation), may be read-only, show their last use,
and a password change revokes them unless the user keeps them."""
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from workspaces import services
from workspaces.models import ApiToken

pytestmark = pytest.mark.django_db


def _client(secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_a_new_token_expires_in_90_days_by_default(owner, workspace):
    token, _ = services.token_create(user=owner, name="laptop")
    assert abs(token.expires_at - (timezone.now() + timedelta(days=90))) < timedelta(minutes=1)


def test_an_expired_token_gets_401_saying_so(owner, workspace):
    token, secret = services.token_create(user=owner, name="old", expires_in_days=1)
    assert _client(secret).get("/api/v1/me/").status_code == 200
    ApiToken.objects.filter(id=token.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = _client(secret).get("/api/v1/me/")
    assert response.status_code == 401
    assert "expired on" in response.json()["error"]["message"]


def test_the_lifetime_is_chosen_at_creation_within_the_maximum(owner_api, settings):
    created = owner_api.post("/api/v1/tokens/", {"name": "ci", "expires_in_days": 7}, format="json").json()
    assert created["expires_at"] and created["state"] == "active"
    token = ApiToken.objects.get(id=created["id"])
    assert abs(token.expires_at - (timezone.now() + timedelta(days=7))) < timedelta(minutes=1)
    too_long = owner_api.post("/api/v1/tokens/", {"name": "forever", "expires_in_days": 10_000}, format="json")
    assert too_long.status_code == 400
    assert "1 to 365 days" in too_long.json()["error"]["message"]


def test_a_read_only_token_reads_but_cannot_write(owner, workspace):
    _, secret = services.token_create(user=owner, name="dashboards", read_only=True)
    client = _client(secret)
    assert client.get("/api/v1/workspaces/").status_code == 200
    for method, url in (("post", "/api/v1/projects/"), ("post", "/api/v1/tokens/"), ("delete", "/api/v1/workspaces/team/")):
        response = getattr(client, method)(url, {"name": "x"}, format="json")
        assert response.status_code == 403, (url, response.content)
        assert "read-only" in response.json()["error"]["message"]
    from runs.models import Project

    assert not Project.objects.exists()


def test_the_api_shows_last_use(owner, workspace):
    token, secret = services.token_create(user=owner, name="used")
    assert token.last_used_at is None
    _client(secret).get("/api/v1/me/")
    listed = _client(secret).get("/api/v1/tokens/").json()["results"]
    mine = next(t for t in listed if t["id"] == str(token.id))
    assert mine["last_used_at"] is not None and mine["read_only"] is False


def test_the_page_creates_a_read_only_token_with_its_expiry(page_client, owner, workspace):
    client = page_client(owner)
    response = client.post("/tokens/", {"name": "page", "expires_in_days": 30, "read_only": "on"})
    assert response.status_code == 200 and response.context["new_secret"]
    token = ApiToken.objects.get(name="page")
    assert token.read_only
    page = client.get("/tokens/").content.decode()
    assert "read-only" in page and "Expires" in page and "never" in page  # last used: never


def test_a_password_change_revokes_the_users_tokens(page_client, owner, workspace):
    _, secret = services.token_create(user=owner, name="laptop")
    client = page_client(owner)
    response = client.post("/password/", {"old_password": "pw-for-tests-1", "new_password1": "a-New-pass-99",
                                          "new_password2": "a-New-pass-99"})
    assert response.status_code == 302
    assert _client(secret).get("/api/v1/me/").status_code == 401


def test_a_password_change_may_keep_the_tokens(page_client, owner, workspace):
    _, secret = services.token_create(user=owner, name="laptop")
    client = page_client(owner)
    response = client.post("/password/", {"old_password": "pw-for-tests-1", "new_password1": "a-New-pass-99",
                                          "new_password2": "a-New-pass-99", "keep_tokens": "on"})
    assert response.status_code == 302
    assert _client(secret).get("/api/v1/me/").status_code == 200


def test_a_password_set_elsewhere_revokes_too(owner, workspace):
    _, secret = services.token_create(user=owner, name="laptop")
    owner.last_name = "unrelated"
    owner.save()
    assert _client(secret).get("/api/v1/me/").status_code == 200
    owner.set_password("set-by-the-admin-1")
    owner.save()
    assert _client(secret).get("/api/v1/me/").status_code == 401


def test_the_management_command_takes_expiry_and_scope(owner, capsys):
    call_command("create_api_token", "olivia", "--name", "ci", "--expires-days", "5", "--read-only")
    token = ApiToken.objects.get(name="ci")
    assert token.read_only and token.expires_at < timezone.now() + timedelta(days=5, minutes=1)
    with pytest.raises(CommandError, match="1 to 365 days"):
        call_command("create_api_token", "olivia", "--expires-days", "999")
