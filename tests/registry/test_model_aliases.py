"""Model version aliases and their history: set by hand (API, page), moved again, removed; "which
version was in production when" from one call; bad input 400, readers 403, outsiders 404."""
from __future__ import annotations

import pytest

from registry.models import ModelAlias, ModelAliasEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_versions(owner_api, register_model):
    for _ in range(2):
        assert register_model(owner_api).status_code == 201


def test_production_moves_and_every_period_is_kept(owner_api, two_versions):
    first = owner_api.post("/api/v1/models/model.pkl/aliases/", {"alias": "production", "version": 1}, format="json")
    assert first.status_code == 200, first.json()
    assert first.json()["aliases"][0]["version"] == 1
    owner_api.post("/api/v1/models/model.pkl/aliases/", {"alias": "staging"}, format="json")  # the latest: v2
    moved = owner_api.post("/api/v1/models/model.pkl/aliases/", {"alias": "production", "version": 2,
                                                                  "reason": "retrained"}, format="json").json()
    assert {a["alias"]: a["version"] for a in moved["aliases"]} == {"production": 2, "staging": 2}
    history = owner_api.get("/api/v1/models/model.pkl/aliases/?alias=production").json()["history"]
    assert [(p["version"], p["until"] is None, p["reason"]) for p in history] == [(2, True, "retrained"), (1, False, "set by hand")]
    assert history[1]["until"] == history[0]["from"]
    # The same version again is no move.
    owner_api.post("/api/v1/models/model.pkl/aliases/", {"alias": "production", "version": 2}, format="json")
    assert ModelAliasEvent.objects.filter(alias="production").count() == 2
    removed = owner_api.post("/api/v1/models/model.pkl/aliases/", {"alias": "staging", "remove": True}, format="json").json()
    assert [a["alias"] for a in removed["aliases"]] == ["production"]
    staging = owner_api.get("/api/v1/models/model.pkl/aliases/?alias=staging").json()["history"]
    assert len(staging) == 1 and staging[0]["until"] is not None


@pytest.mark.parametrize("payload, field", [({"alias": "Prod!"}, "alias"), ({"alias": "latest"}, "alias"),
                                            ({"alias": "production", "version": 9}, "version")])
def test_bad_aliases_and_versions_are_400s_naming_the_field(owner_api, two_versions, payload, field):
    answer = owner_api.post("/api/v1/models/model.pkl/aliases/", payload, format="json")
    assert answer.status_code == 400 and field in answer.json()["error"]["fields"], answer.json()
    assert not ModelAlias.objects.exists() and not ModelAliasEvent.objects.exists()


def test_readers_cannot_move_aliases_and_outsiders_see_none(owner_api, reader_api, outsider_api, two_versions):
    owner_api.post("/api/v1/models/model.pkl/aliases/", {"alias": "production", "version": 1}, format="json")
    assert reader_api.post("/api/v1/models/model.pkl/aliases/", {"alias": "production", "version": 2},
                           format="json").status_code == 403
    assert reader_api.get("/api/v1/models/model.pkl/aliases/").json()["aliases"][0]["version"] == 1
    assert outsider_api.get("/api/v1/models/model.pkl/aliases/").status_code == 404
    assert outsider_api.post("/api/v1/models/model.pkl/aliases/", {"alias": "x"}, format="json").status_code == 404


def test_the_model_page_shows_the_history_and_sets_an_alias(page_client, owner, owner_api, two_versions):
    from registry.models import Model

    v1 = Model.objects.get(version=1)
    client = page_client(owner)
    answer = client.post(f"/models/{v1.pk}/alias/", {"alias": "production", "version": "1"})
    assert answer.status_code == 302
    client.post(f"/models/{v1.pk}/alias/", {"alias": "production", "version": "2"})
    page = client.get(f"/models/{v1.pk}/").content.decode()
    assert 'data-testid="alias-history"' in page and page.count("<code>production</code>") == 3  # now + 2 periods


def test_a_production_environment_is_told_by_name_or_label():
    from types import SimpleNamespace

    from registry.aliases import is_production

    assert is_production(SimpleNamespace(name="production", labels={}))
    assert is_production(SimpleNamespace(name="prod-eu", labels={"stage": "Production"}))
    assert is_production(SimpleNamespace(name="eu", labels={"production": "true"}))
    assert not is_production(SimpleNamespace(name="staging", labels={"stage": "staging", "production": "no"}))
