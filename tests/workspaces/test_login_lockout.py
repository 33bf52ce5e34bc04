"""Sign-in is locked per user name and address after a few failures (django-axes), on the portal's
login page and on the admin's alike; the answer is 429 with Retry-After and says how long to wait."""
import pytest

pytestmark = pytest.mark.django_db

LOGIN_PAGES = ["/login/", "/admin/login/"]


def _fail(client, url, username, times, address="10.0.0.7"):
    return [client.post(url, {"username": username, "password": "wrong-password"}, REMOTE_ADDR=address).status_code
            for _ in range(times)]


@pytest.mark.parametrize("url", LOGIN_PAGES)
def test_it_locks_a_user_out_after_five_failures(client, owner, url, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    codes = _fail(client, url, "olivia", 7)
    assert codes[:4] == [200] * 4  # the form again, with its error
    assert codes[4:] == [429, 429, 429]
    # Now even the right password is refused from this address, with a wait that is said out loud.
    response = client.post(url, {"username": "olivia", "password": "pw-for-tests-1"}, REMOTE_ADDR="10.0.0.7")
    assert response.status_code == 429
    assert int(response["Retry-After"]) == 15 * 60
    assert "try again in 15 minute(s)" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_two_hundred_wrong_passwords_get_nowhere(client, owner):
    codes = _fail(client, "/login/", "olivia", 200)
    assert codes.count(429) == 196


def test_the_lock_holds_for_that_user_and_address_only(client, owner, make_user):
    make_user("other")
    _fail(client, "/login/", "olivia", 5)
    other_user = client.post("/login/", {"username": "other", "password": "pw-for-tests-1"}, REMOTE_ADDR="10.0.0.7")
    assert other_user.status_code == 302
    client.logout()
    other_address = client.post("/login/", {"username": "olivia", "password": "pw-for-tests-1"}, REMOTE_ADDR="10.0.0.8")
    assert other_address.status_code == 302


def test_a_json_client_gets_the_error_shape(client, owner):
    _fail(client, "/login/", "olivia", 5)
    response = client.post("/login/", {"username": "olivia", "password": "x"}, REMOTE_ADDR="10.0.0.7",
                           HTTP_ACCEPT="application/json")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "locked_out"


def test_a_success_before_the_limit_resets_the_count(client, owner):
    _fail(client, "/login/", "olivia", 4)
    assert client.post("/login/", {"username": "olivia", "password": "pw-for-tests-1"}, REMOTE_ADDR="10.0.0.7").status_code == 302
    client.logout()
    assert _fail(client, "/login/", "olivia", 4) == [200] * 4
