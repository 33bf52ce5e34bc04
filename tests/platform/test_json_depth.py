"""A JSON body nested beyond MLPORTAL_MAX_JSON_DEPTH answers 400 in the error shape on every JSON
API, before a parser can recurse itself into an HTML 500."""
import json

import pytest

from workspaces.middleware import json_depth_over

pytestmark = pytest.mark.django_db

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("method,url", [
    ("post", "/api/v1/projects/"),
    ("post", "/api/v1/runs/"),
    ("patch", "/api/v1/projects/scratch/"),
    ("post", "/api/v1/services/anything/score"),
    ("post", "/api/v1/workspaces/"),
])
def test_a_100000_deep_body_answers_400_in_the_error_shape(owner_api, method, url):
    response = getattr(owner_api, method)(url, data=DEEP, content_type="application/json")
    assert response.status_code == 400, response.content[:200]
    error = response.json()["error"]
    assert error["code"] == "too_deep"
    assert "deeper than 64 levels" in error["message"]


def test_a_deep_body_inside_an_object_is_caught_too(owner_api):
    body = '{"name": "x", "requirements": ' + "{\"a\": " * 65 + "1" + "}" * 65 + "}"
    response = owner_api.post("/api/v1/projects/", data=body, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_deep"


def test_brackets_inside_strings_do_not_count(owner_api):
    body = json.dumps({"name": "brackets", "description": "[" * 5000 + '\\"{' * 100})
    response = owner_api.post("/api/v1/projects/", data=body, content_type="application/json")
    assert response.status_code == 201, response.content[:300]


def test_the_counter_stops_at_the_limit():
    assert json_depth_over(b"[" * 65 + b"]" * 65, 64)
    assert not json_depth_over(b"[" * 64 + b"]" * 64, 64)
    assert not json_depth_over(b'[["[[[[", {"a": [1]}]]', 4)
    assert json_depth_over(b'[[[[1]]]]', 3)


def test_brackets_in_strings_cannot_hide_a_deep_body():
    # Strings whose brackets would pair with the real ones if strings were not taken out first.
    evil = b"[" * 70 + b'"' + b"]" * 70 + b'", "' + b"[" * 70 + b'"' + b"]" * 70
    assert json_depth_over(evil, 64)
    escaped = b'{"s": "\\\\", "t": "\\" [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ \\\\"}'
    assert not json_depth_over(escaped, 64)
