"""The Content-Security-Policy header on pages, the API docs and the admin (no unsafe-inline, no
other origin), and the /csp-report/ endpoint that logs what browsers report."""
from __future__ import annotations

import json
import logging

import pytest

pytestmark = pytest.mark.django_db


def directives(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    parsed = {}
    for part in header.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


def test_pages_carry_a_policy_without_unsafe_inline(client, page_client, owner, workspace):
    for response in (client.get("/login/"), client.get("/admin/login/"), page_client(owner).get("/"),
                     page_client(owner).get("/api/v1/docs/")):
        assert response.status_code == 200
        policy = directives(response)
        assert "unsafe-inline" not in response["Content-Security-Policy"]
        assert "unsafe-eval" not in response["Content-Security-Policy"]
        for name in ("default-src", "script-src", "style-src", "connect-src"):
            assert policy[name] == ["'self'"], (name, policy)
        assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
        assert policy["report-uri"] == ["/csp-report/"]


def test_api_answers_carry_the_policy_too(owner_api):
    response = owner_api.get("/api/v1/me/")
    assert response.status_code == 200 and "script-src 'self'" in response["Content-Security-Policy"]


def test_the_api_docs_page_loads_its_start_up_script_as_a_file(page_client, owner, workspace):
    client = page_client(owner)
    html = client.get("/api/v1/docs/").content.decode()
    assert "<style" not in html and "<script>" not in html
    assert 'src="/api/v1/docs/?script="' in html and "css/swagger.css" in html
    script = client.get("/api/v1/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in script.content.decode()


def report_body(**fields) -> str:
    return json.dumps({"csp-report": {"document-uri": "http://testserver/runs/", "violated-directive": "script-src-elem",
                                      "effective-directive": "script-src-elem", "blocked-uri": "inline",
                                      "source-file": "http://testserver/runs/", "line-number": 3, **fields}})


def test_the_report_endpoint_logs_a_report_uri_report(client, caplog):
    with caplog.at_level(logging.WARNING, logger="mlportal.csp"):
        response = client.post("/csp-report/", report_body(), content_type="application/csp-report")
    assert response.status_code == 204
    [record] = [r for r in caplog.records if r.name == "mlportal.csp"]
    message = record.getMessage()
    assert "directive=script-src-elem" in message and "blocked=inline" in message and "document=http://testserver/runs/" in message


def test_the_report_endpoint_reads_reporting_api_batches(client, caplog):
    batch = [{"type": "csp-violation", "url": "http://testserver/", "body": {
        "documentURL": "http://testserver/", "effectiveDirective": "style-src-attr", "blockedURL": "inline",
        "disposition": "enforce"}}, {"type": "deprecation", "body": {"id": "x"}}]
    with caplog.at_level(logging.WARNING, logger="mlportal.csp"):
        response = client.post("/csp-report/", json.dumps(batch), content_type="application/reports+json")
    assert response.status_code == 204
    messages = [r.getMessage() for r in caplog.records if r.name == "mlportal.csp"]
    assert len(messages) == 1 and "directive=style-src-attr" in messages[0] and "disposition=enforce" in messages[0]


def test_a_hostile_report_cannot_forge_log_lines(client, caplog):
    with caplog.at_level(logging.WARNING, logger="mlportal.csp"):
        client.post("/csp-report/", report_body(**{"blocked-uri": "inline\nCRITICAL forged line" + "x" * 5000}),
                    content_type="application/csp-report")
    [message] = [r.getMessage() for r in caplog.records if r.name == "mlportal.csp"]
    assert "\n" not in message and len(message) < 2000


@pytest.mark.parametrize("body, code", [
    ("not json", "invalid_report"), ('{"something": 1}', "invalid_report"), ("[1, 2]", "invalid_report"),
    ('[{"type": "csp-violation", "body": "x"}]', "invalid_report"), ("\xff", "invalid_report"),
])
def test_a_body_that_is_not_a_report_answers_400_in_the_error_shape(client, caplog, body, code):
    with caplog.at_level(logging.WARNING, logger="mlportal.csp"):
        response = client.post("/csp-report/", body, content_type="application/csp-report")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code and "Not a CSP violation report" in error["message"]
    assert not [r for r in caplog.records if r.name == "mlportal.csp"]


def test_an_oversized_report_answers_413_and_get_answers_405(client):
    big = report_body(**{"script-sample": "x" * 70_000})
    response = client.post("/csp-report/", big, content_type="application/csp-report")
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    response = client.get("/csp-report/")
    assert response.status_code == 405 and "POST" in response.json()["error"]["message"]


def test_a_flood_of_reports_is_logged_up_to_the_budget_then_counted(client, caplog, monkeypatch):
    from mlportal import csp

    clock = [600.0]
    monkeypatch.setattr(csp, "log_budget", csp._LogBudget(3, clock=lambda: clock[0]))
    with caplog.at_level(logging.WARNING, logger="mlportal.csp"):
        for _ in range(10):
            assert client.post("/csp-report/", report_body(), content_type="application/csp-report").status_code == 204
        clock[0] += 60  # the next minute: the count of what was dropped, then logging again
        client.post("/csp-report/", report_body(), content_type="application/csp-report")
    messages = [r.getMessage() for r in caplog.records if r.name == "mlportal.csp"]
    assert len(messages) == 5, messages
    assert messages[3] == "CSP violation: 7 more reports in the last minute were not logged"
    assert "directive=script-src-elem" in messages[4]
