import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from workspaces import services
from workspaces.models import ApiToken

pytestmark = pytest.mark.django_db


def test_a_new_token_authenticates_and_is_stored_only_hashed(owner, workspace):
    token, secret = services.token_create(user=owner, name="laptop")
    assert secret not in (token.token_hash, token.prefix)
    assert not ApiToken.objects.filter(token_hash=secret).exists()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = client.get("/api/v1/me/")
    assert response.status_code == 200
    assert response.json()["username"] == "olivia"
    assert response.json()["workspace"] == "team"


def test_it_creates_lists_and_revokes_tokens_over_the_api(owner_api):
    created = owner_api.post("/api/v1/tokens/", {"name": "ci"}, format="json")
    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret.startswith("mlp_")
    listed = owner_api.get("/api/v1/tokens/").json()
    assert "ci" in [t["name"] for t in listed["results"]]
    assert all("token" not in t for t in listed["results"])
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert other.get("/api/v1/me/").status_code == 200
    assert owner_api.delete(f"/api/v1/tokens/{created.json()['id']}/").status_code == 204
    revoked = other.get("/api/v1/me/")
    assert revoked.status_code == 401
    assert "revoked" in revoked.json()["error"]["message"]


def test_a_deactivated_user_gets_401_at_once(owner):
    _, secret = services.token_create(user=owner, name="x")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/me/").status_code == 200
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    assert client.get("/api/v1/me/").status_code == 401


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer nope", "Bearer a b"])
def test_missing_or_bad_tokens_get_401_with_the_error_shape(header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/workspaces/")
    assert response.status_code == 401
    body = response.json()["error"]
    assert body["code"] in {"not_authenticated", "authentication_failed"}
    assert body["message"]


def test_a_user_cannot_revoke_someone_elses_token(owner_api, outsider):
    token, _ = services.token_create(user=outsider, name="theirs")
    assert owner_api.delete(f"/api/v1/tokens/{token.id}/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_the_tokens_page_shows_a_new_token_once(page_client, owner, workspace):
    client = page_client(owner)
    response = client.post("/tokens/", {"name": "from page"})
    assert response.status_code == 200
    secret = response.context["new_secret"]
    assert secret and secret.encode() in response.content
    again = client.get("/tokens/")
    assert secret.encode() not in again.content
    assert b"from page" in again.content
