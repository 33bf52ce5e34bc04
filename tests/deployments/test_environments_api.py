"""/api/v1/environments/: the lab's env setup / list / show / set, and who may do what."""
from __future__ import annotations

import pytest

from deployments.models import ActiveEnvironment, Environment

pytestmark = pytest.mark.django_db


def create(api, name="staging", **fields):
    return api.post("/api/v1/environments/", {"name": name, **fields}, format="json")


def test_setup_creates_a_local_environment_on_the_workers_engine(owner_api):
    response = create(owner_api, "staging", labels={"stage": "staging"}, description="for testing")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "staging" and body["kind"] == "local" and body["engine_url"] == ""
    assert body["publish_address"] == "127.0.0.1" and body["labels"] == {"stage": "staging"}
    assert body["workspace"] == "team" and body["created_by"] == "olivia" and body["services"] == []
    assert set(body["engine"]) == {"ok", "version", "error"}


@pytest.mark.docker
def test_it_shows_that_the_local_engine_answers_and_its_version(owner_api):
    body = create(owner_api, "local").json()
    assert body["engine"]["ok"] is True, body["engine"]
    assert body["engine"]["version"] and body["engine"]["error"] is None


def test_an_unreachable_engine_shows_down_with_the_engines_error(owner_api):
    body = create(owner_api, "remote", engine_url="tcp://127.0.0.1:1").json()
    assert body["engine_url"] == "tcp://127.0.0.1:1"
    assert body["engine"]["ok"] is False and "127.0.0.1:1" in body["engine"]["error"]


def test_an_unknown_kind_is_refused_with_the_kinds_there_are(owner_api):
    response = create(owner_api, "aks", kind="kubernetes")
    assert response.status_code == 400
    assert "use 'local' or 'cluster' (a Docker Swarm)" in response.json()["error"]["message"]
    assert "kind" in response.json()["error"]["fields"]
    assert not Environment.objects.exists()


@pytest.mark.parametrize("url, says", [
    ("http://docker:2375", "not supported"),
    ("unix:///var/run/docker.sock", "not supported"),
    ("tcp://docker", "needs a port"),
    ("tcp://docker:99999", "invalid port"),
    ("tcp://:2375", "names no host"),
    ("tcp://user@docker:2375", "no user name"),
    ("tcp://docker:2375/v1.41", "path"),
    ("ssh://user:secret@host", "password"),
    ("tcp://docker:2375 --tls", "without spaces"),
])
def test_engine_urls_are_validated(owner_api, url, says):
    response = create(owner_api, "remote", engine_url=url)
    assert response.status_code == 400
    error = response.json()["error"]
    assert says in error["message"] and "engine_url" in error["fields"]


def test_ssh_engine_urls_are_accepted_where_the_administrator_allows_them(owner_api, settings):
    settings.MLPORTAL_ENGINE_SSH = True
    response = create(owner_api, "remote", engine_url="ssh://deploy@10.0.0.5")
    assert response.status_code == 201 and response.json()["engine_url"] == "ssh://deploy@10.0.0.5"


@pytest.mark.parametrize("field, value, says", [
    ("publish_address", "localhost", "not an IP address"),
    ("labels", ["staging"], "JSON object"),
    ("labels", {"stage": {"nested": 1}}, "text or number"),
    ("name", "Staging!", "not allowed"),
])
def test_bad_fields_are_refused_naming_the_field(owner_api, field, value, says):
    response = create(owner_api, "staging", **{field: value}) if field != "name" else create(owner_api, value)
    assert response.status_code == 400
    assert says in response.json()["error"]["message"] and field in response.json()["error"]["fields"]


def test_a_duplicate_name_is_refused(owner_api):
    create(owner_api, "staging")
    response = create(owner_api, "staging")
    assert response.status_code == 400 and "already" in response.json()["error"]["message"]


def test_env_set_is_remembered_per_user_and_env_show_returns_it(owner_api, contributor_api):
    create(owner_api, "staging")
    create(owner_api, "production", labels={"stage": "production"})
    assert owner_api.get("/api/v1/environments/active/").status_code == 404
    activated = owner_api.post("/api/v1/environments/production/activate/")
    assert activated.status_code == 200 and activated.json()["active"] is True
    shown = owner_api.get("/api/v1/environments/active/").json()
    assert shown["name"] == "production" and shown["labels"] == {"stage": "production"}
    # Another member's choice is their own.
    contributor_api.post("/api/v1/environments/staging/activate/")
    assert owner_api.get("/api/v1/environments/active/").json()["name"] == "production"
    assert contributor_api.get("/api/v1/environments/active/").json()["name"] == "staging"
    listed = {e["name"]: e["active"] for e in owner_api.get("/api/v1/environments/").json()["results"]}
    assert listed == {"production": True, "staging": False}


def test_env_show_without_an_active_one_says_how_to_set_it(owner_api):
    response = owner_api.get("/api/v1/environments/active/")
    assert response.status_code == 404
    assert "activate" in response.json()["error"]["message"]


def test_a_reader_can_list_and_activate_but_not_create_or_delete(owner_api, reader_api):
    create(owner_api, "staging")
    assert reader_api.get("/api/v1/environments/").json()["count"] == 1
    assert reader_api.post("/api/v1/environments/staging/activate/").status_code == 200
    refused = create(reader_api, "mine", workspace="team")
    assert refused.status_code == 403 and "contributor" in refused.json()["error"]["message"]
    assert reader_api.delete("/api/v1/environments/staging/").status_code == 403


def test_only_an_owner_deletes_an_environment(owner_api, contributor_api):
    create(owner_api, "staging")
    assert contributor_api.delete("/api/v1/environments/staging/").status_code == 403
    assert owner_api.delete("/api/v1/environments/staging/").status_code == 204
    assert not Environment.objects.exists() and not ActiveEnvironment.objects.exists()


def test_outsiders_get_404_for_an_environment_and_its_actions(owner_api, outsider_api):
    env_id = create(owner_api, "staging").json()["id"]
    for ref in ("staging", env_id):
        assert outsider_api.get(f"/api/v1/environments/{ref}/").status_code == 404
        assert outsider_api.post(f"/api/v1/environments/{ref}/activate/").status_code == 404
        assert outsider_api.delete(f"/api/v1/environments/{ref}/").status_code == 404
    assert outsider_api.get("/api/v1/environments/").json()["count"] == 0


def test_the_list_pages_searches_and_orders(owner_api):
    for name in ("alpha", "beta", "gamma"):
        create(owner_api, name, description=f"the {name} one")
    page = owner_api.get("/api/v1/environments/?page_size=2&ordering=-name").json()
    assert page["count"] == 3 and [e["name"] for e in page["results"]] == ["gamma", "beta"] and page["next"]
    assert [e["name"] for e in owner_api.get("/api/v1/environments/?search=bet").json()["results"]] == ["beta"]


def test_an_owner_edits_description_labels_and_engine_and_it_is_recorded(owner_api, contributor_api):
    create(owner_api, "staging", labels={"stage": "staging"})
    refused = contributor_api.patch("/api/v1/environments/staging/", {"engine_url": "tcp://10.0.0.5:2375"}, format="json")
    assert refused.status_code == 403  # which machines the portal talks to is the owner's choice
    response = owner_api.patch("/api/v1/environments/staging/", {
        "description": "the team's staging host", "labels": {"stage": "staging", "owner": "ml"},
        "engine_url": "tcp://10.0.0.5:2375", "publish_address": "10.0.0.5"}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["description"], body["labels"], body["engine_url"], body["publish_address"]) == (
        "the team's staging host", {"stage": "staging", "owner": "ml"}, "tcp://10.0.0.5:2375", "10.0.0.5")
    env = Environment.objects.get(name="staging")
    assert env.engine_url == "tcp://10.0.0.5:2375"
    activity = owner_api.get("/api/v1/activity/?verb=environment.updated").json()["results"]
    assert len(activity) == 1 and activity[0]["detail"]["changed"] == ["description", "engine_url", "labels", "publish_address"]
    # Only what is sent changes; sending the same again records nothing.
    assert contributor_api.patch("/api/v1/environments/staging/", {"description": "the team's staging host"},
                                 format="json").json()["labels"] == {"stage": "staging", "owner": "ml"}
    assert owner_api.get("/api/v1/activity/?verb=environment.updated").json()["count"] == 1


@pytest.mark.parametrize("body,field,says", [
    ({"name": "prod"}, "name", "set up a new environment"),
    ({"kind": "cluster"}, "kind", "Only description, labels"),
    ({"engine_url": "http://host:2375"}, "engine_url", "tcp://"),
    ({"publish_address": "not-an-ip"}, "publish_address", ""),
    ({"labels": ["a"]}, "labels", ""),
    ({"description": "x" * 2001}, "description", "2000 characters"),
])
def test_bad_edits_answer_400_naming_the_field_and_change_nothing(owner_api, body, field, says):
    create(owner_api, "staging", description="before")
    response = owner_api.patch("/api/v1/environments/staging/", body, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert field in error["fields"] and says in error["message"], error
    env = Environment.objects.get(name="staging")
    assert (env.name, env.description, env.engine_url, env.publish_address) == ("staging", "before", "", "127.0.0.1")


def test_readers_cannot_edit_and_outsiders_get_404(owner_api, reader_api, outsider_api):
    create(owner_api, "staging")
    refused = reader_api.patch("/api/v1/environments/staging/", {"description": "mine"}, format="json")
    assert refused.status_code == 403 and "contributor" in refused.json()["error"]["message"]
    assert outsider_api.patch("/api/v1/environments/staging/", {"description": "x"}, format="json").status_code == 404
    assert Environment.objects.get(name="staging").description == ""
