"""API requests are throttled per token (DRF throttles): 429 with Retry-After, in the error shape."""
import pytest

pytestmark = pytest.mark.django_db


def test_a_token_over_its_rate_gets_429_with_retry_after(owner_api, settings):
    settings.MLPORTAL_API_RATE = "5/min"
    codes = [owner_api.get("/api/v1/workspaces/").status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2
    response = owner_api.get("/api/v1/workspaces/")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    error = response.json()["error"]
    assert error["code"] == "throttled" and "seconds" in error["message"]


def test_the_count_is_per_token(owner, workspace, api_for, settings):
    settings.MLPORTAL_API_RATE = "3/min"
    first, second = api_for(owner), api_for(owner)
    assert [first.get("/api/v1/me/").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert second.get("/api/v1/me/").status_code == 200


def test_writes_have_their_own_lower_rate(owner_api, settings):
    settings.MLPORTAL_API_WRITE_RATE = "2/min"
    codes = [owner_api.post("/api/v1/tokens/", {"name": f"t{i}"}, format="json").status_code for i in range(3)]
    assert codes == [201, 201, 429]
    assert owner_api.get("/api/v1/tokens/").status_code == 200  # reads still go
