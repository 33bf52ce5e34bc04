import pytest

from workspaces import services

pytestmark = pytest.mark.django_db


def test_pages_need_login(client):
    response = client.get("/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_login_and_the_dashboard_shell(client, owner, workspace):
    response = client.post("/login/", {"username": "olivia", "password": "pw-for-tests-1"}, follow=True)
    html = response.content.decode()
    assert response.status_code == 200
    assert "Dashboard" in html and "workspace-switcher" in html
    for section in ("Activity",):
        assert section in html


def test_the_workspace_switcher_changes_the_current_workspace(page_client, owner, workspace):
    services.workspace_create(name="second", user=owner)
    client = page_client(owner)
    client.post("/workspaces/switch/", {"workspace": "team", "next": "/activity/"})
    assert client.get("/").context["current_workspace"].name == "team"


@pytest.mark.parametrize("target", ["/\\evil.example", "//evil.example", "https://evil.example/", "/\\/evil.example",
                                    "javascript:alert(1)", "\\\\evil.example"])
def test_the_switcher_never_redirects_to_another_site(page_client, owner, workspace, target):
    """Seen: next=/\\evil.com passed the old '/' check, and a browser reads it as //evil.com."""
    response = page_client(owner).post("/workspaces/switch/", {"workspace": "team", "next": target})
    assert response.status_code == 302 and response["Location"] == "/", response["Location"]


def test_the_switcher_returns_to_the_page_it_was_on(page_client, owner, workspace):
    response = page_client(owner).post("/workspaces/switch/", {"workspace": "team", "next": "/runs/?q=a"})
    assert response["Location"] == "/runs/?q=a"


def test_switching_to_a_foreign_workspace_changes_nothing(page_client, owner, workspace, outsider):
    client = page_client(owner)
    client.post("/workspaces/switch/", {"workspace": "elsewhere"})
    assert client.get("/").context["current_workspace"].name == "team"


def test_outsider_gets_404_for_a_foreign_workspace_page(page_client, outsider, workspace):
    assert page_client(outsider).get("/workspaces/team/").status_code == 404


def test_an_owner_adds_a_member_from_the_page_and_sees_field_errors(page_client, owner, workspace, make_user):
    client = page_client(owner)
    bad = client.post("/workspaces/team/", {"username": "ghost", "role": "reader"})
    assert "No active user named" in bad.content.decode()
    make_user("newbie")
    client.post("/workspaces/team/", {"username": "newbie", "role": "reader"})
    assert "newbie" in client.get("/workspaces/team/").content.decode()


def test_the_activity_page_escapes_html_and_filters(page_client, owner, workspace):
    services.activity_record(workspace=workspace, actor=owner, verb="x.<b>bold</b>", target=workspace)
    client = page_client(owner)
    html = client.get("/activity/").content.decode()
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    filtered = client.get("/activity/?verb=workspace.created").content.decode()
    assert "workspace.created" in filtered and "bold" not in filtered


def test_password_change(page_client, owner):
    client = page_client(owner)
    response = client.post("/password/", {
        "old_password": "pw-for-tests-1", "new_password1": "a-much-longer-pass-42", "new_password2": "a-much-longer-pass-42",
    })
    assert response.status_code == 302
    owner.refresh_from_db()
    assert owner.check_password("a-much-longer-pass-42")
