import pytest

from workspaces.models import Activity, Membership, Role

pytestmark = pytest.mark.django_db


def test_a_user_lists_only_their_workspaces(owner_api, outsider):
    names = [w["name"] for w in owner_api.get("/api/v1/workspaces/").json()["results"]]
    assert names == ["team"]


def test_a_workspace_is_addressable_by_id_and_by_name(owner_api, workspace):
    by_name = owner_api.get("/api/v1/workspaces/team/").json()
    by_id = owner_api.get(f"/api/v1/workspaces/{workspace.id}/").json()
    assert by_name == by_id
    assert by_name["role"] == "owner"


def test_outsider_gets_404_for_a_foreign_workspace_and_its_members(outsider_api, workspace):
    assert outsider_api.get(f"/api/v1/workspaces/{workspace.id}/").status_code == 404
    assert outsider_api.get("/api/v1/workspaces/team/members/").status_code == 404
    assert outsider_api.post("/api/v1/workspaces/team/members/", {"username": "oscar"}, format="json").status_code == 404
    assert outsider_api.delete("/api/v1/workspaces/team/").status_code == 404


def test_creating_a_workspace_makes_the_creator_owner_and_current(outsider_api):
    response = outsider_api.post("/api/v1/workspaces/", {"name": "churn-team"}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["role"] == "owner"
    assert outsider_api.get("/api/v1/me/").json()["workspace"] == "churn-team"


@pytest.mark.parametrize("name", ["", "Bad Name", "a/b", "x" * 64, "-lead", "tab\tname"])
def test_it_rejects_bad_workspace_names_with_the_field_at_fault(owner_api, name):
    response = owner_api.post("/api/v1/workspaces/", {"name": name}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "name" in error["fields"]
    assert error["message"]


def test_it_rejects_a_duplicate_workspace_name(owner_api, outsider):
    response = owner_api.post("/api/v1/workspaces/", {"name": "elsewhere"}, format="json")
    assert response.status_code in (400, 409)
    assert "elsewhere" in response.json()["error"]["message"]


def test_owners_add_members_change_roles_and_remove_them(owner_api, workspace, make_user):
    make_user("newbie")
    added = owner_api.post("/api/v1/workspaces/team/members/", {"username": "newbie", "role": "reader"}, format="json")
    assert added.status_code == 201
    changed = owner_api.patch("/api/v1/workspaces/team/members/newbie/", {"role": "contributor"}, format="json")
    assert changed.json()["role"] == "contributor"
    assert owner_api.delete("/api/v1/workspaces/team/members/newbie/").status_code == 204
    assert not Membership.objects.filter(workspace=workspace, user__username="newbie").exists()
    verbs = list(Activity.objects.filter(workspace=workspace).values_list("verb", flat=True))
    assert {"member.added", "member.role_changed", "member.removed"} <= set(verbs)


def test_a_contributor_cannot_manage_members_and_is_told_the_role_needed(contributor_api, make_user):
    make_user("newbie")
    response = contributor_api.post("/api/v1/workspaces/team/members/", {"username": "newbie"}, format="json")
    assert response.status_code == 403
    assert "owner role" in response.json()["error"]["message"]


def test_a_reader_cannot_change_anything(reader_api):
    response = reader_api.patch("/api/v1/workspaces/team/", {"description": "x"}, format="json")
    assert response.status_code == 403
    assert "you are a reader" in response.json()["error"]["message"]


def test_the_last_owner_cannot_step_down(owner_api, owner, workspace):
    response = owner_api.patch(f"/api/v1/workspaces/team/members/{owner.username}/", {"role": "reader"}, format="json")
    assert response.status_code == 409
    assert Membership.objects.get(workspace=workspace, user=owner).role == Role.OWNER


def test_malformed_json_gets_400_naming_the_body(owner_api):
    response = owner_api.generic("POST", "/api/v1/workspaces/", '{"name": ', content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"
    assert "body" in response.json()["error"]["fields"]


def test_a_json_body_over_the_cap_gets_413(owner_api, settings):
    body = '{"name": "x", "description": "' + "a" * (settings.MLPORTAL_MAX_BODY_BYTES + 10) + '"}'
    response = owner_api.generic("POST", "/api/v1/workspaces/", body, content_type="application/json")
    assert response.status_code == 413
    assert "limit" in response.json()["error"]["message"]


def test_switching_the_current_workspace(owner_api, owner):
    owner_api.post("/api/v1/workspaces/", {"name": "second"}, format="json")
    assert owner_api.get("/api/v1/me/").json()["workspace"] == "second"
    assert owner_api.post("/api/v1/workspaces/team/select/").status_code == 200
    assert owner_api.get("/api/v1/me/").json()["workspace"] == "team"


def test_activity_is_scoped_filterable_and_paginated(owner_api, outsider_api, workspace, make_user):
    for i in range(30):
        make_user(f"u{i}")
        owner_api.post("/api/v1/workspaces/team/members/", {"username": f"u{i}", "role": "reader"}, format="json")
    page = owner_api.get("/api/v1/activity/?verb=member.added&page_size=10").json()
    assert page["count"] == 30 and len(page["results"]) == 10 and page["next"]
    assert all(a["verb"] == "member.added" for a in page["results"])
    theirs = outsider_api.get("/api/v1/activity/").json()["results"]
    assert all(a["workspace"] == "elsewhere" for a in theirs)


def test_lists_take_search_and_ordering(owner_api):
    for name in ("beta", "alpha"):
        owner_api.post("/api/v1/workspaces/", {"name": name}, format="json")
    names = [w["name"] for w in owner_api.get("/api/v1/workspaces/?ordering=-name").json()["results"]]
    assert names == ["team", "beta", "alpha"]
    assert [w["name"] for w in owner_api.get("/api/v1/workspaces/?search=alp").json()["results"]] == ["alpha"]


def test_the_openapi_document_and_swagger_ui_are_served_without_a_cdn(owner_api, client, owner):
    schema = owner_api.get("/api/v1/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/workspaces/" in paths and "/api/v1/tokens/" in paths
    client.force_login(owner)
    docs = client.get("/api/v1/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html and "cdn" not in html.lower() and "//unpkg" not in html
