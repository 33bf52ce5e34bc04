"""Issue 16 through the portal, on real service containers started by the real worker:

- requests scored over the Open Inference Protocol (``/v2/models/<name>/infer``, through the
  portal's gateway) are captured as ``/score`` ones are: the same columns, the prediction, the
  request id answered in ``X-Request-Id`` (the caller's, the OIP body's ``id``, or a new one), so
  ground truth joins them; the gateway and the synchronous scoring view pass the id both ways;
- rows a replica's full spool dropped (the collector behind) are counted on the Data tab and the API.
"""
from __future__ import annotations

import http.client
import json
import re
import time

import pytest

from tests.deployments.conftest import SAMPLE_REQUEST, wait_for
from tests.frontend.conftest import csp_reports, watched_page  # noqa: F401 (page fixtures)
from tests.gateway.conftest import gateway, gateway_server_process  # noqa: F401 (the real ASGI server)

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def deployed(api, create_realtime, name: str) -> tuple[dict, str]:
    created = create_realtime(api, name)
    assert created.status_code in (201, 202), created.content
    service = wait_for(api, name, ("healthy", "failed"))
    assert service["status"] == "healthy", service
    return service, api.get(f"/api/v1/services/{name}/keys/").json()["primary"]


def capture_on(api, name: str) -> None:
    """Switches capture to both at 100 % and carries it to the running replica with a pull."""
    from monitoring import worker

    answer = api.patch(f"/api/v1/services/{name}/", {"capture": {"mode": "both", "percent": 100}}, format="json")
    assert answer.status_code == 200, answer.content
    worker.collect_all()
    time.sleep(1.5)  # the replica's workers re-read the switch within 1 s


def stored_ids(service_id) -> set[str]:
    from monitoring.models import CapturedRow

    return set(CapturedRow.objects.filter(service_id=service_id).values_list("request_id", flat=True))


def test_oip_requests_through_the_portal_are_captured_like_score_requests(deploy_worker, gateway, owner_api, create_realtime):
    from monitoring import worker

    service, key = deployed(owner_api, create_realtime, "oipsvc")
    sid = service["id"]
    capture_on(owner_api, "oipsvc")
    auth = {"Authorization": f"Bearer {key}"}
    record = SAMPLE_REQUEST["input_df"][0]
    records = [record, dict(record, age=70), dict(record, age=33)]

    # /score through the gateway: the caller's id goes to the replica and comes back.
    status, headers, _ = gateway.score("oipsvc", {"input_df": records}, key, headers={"X-Request-Id": "gw-score"})
    assert status == 200 and headers["x-request-id"] == "gw-score"
    # OIP infer through the gateway: by header, by the body's id, or a new one the answer names.
    status, _, metadata = gateway.request("GET", "/api/v1/services/oipsvc/v2/models/oipsvc", headers=auth)
    assert status == 200, metadata
    types = {t["name"]: t["datatype"] for t in metadata["inputs"]}

    def infer(request_id: str | None, header: str | None):
        body = {"inputs": [{"name": n, "shape": [len(records)], "datatype": types[n], "data": [r[n] for r in records]}
                           for n in records[0]]}
        if request_id is not None:
            body["id"] = request_id
        extra = {"X-Request-Id": header} if header else {}
        status, headers, answer = gateway.request("POST", "/api/v1/services/oipsvc/v2/models/oipsvc/infer", body,
                                                  headers={**auth, **extra})
        assert status == 200, answer
        return headers["x-request-id"], answer

    by_header, answer = infer(None, "gw-oip")
    by_body, _ = infer("gw-body", None)
    generated, _ = infer(None, None)
    assert (by_header, by_body) == ("gw-oip", "gw-body") and re.fullmatch(r"[0-9a-f]{32}", generated)
    predictions = answer["outputs"][0]["data"]
    # The synchronous scoring view (Django, no gateway) passes the id both ways too.
    from django.test import Client

    direct = Client().post("/api/v1/services/oipsvc/score", json.dumps(SAMPLE_REQUEST), content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_X_REQUEST_ID="sync-score")
    assert direct.status_code == 200 and direct["X-Request-Id"] == "sync-score"

    assert worker.collect_all() >= 13
    expected = {"gw-score#0", "gw-score#1", "gw-score#2", "sync-score"} | {
        f"{rid}#{i}" for rid in ("gw-oip", "gw-body", generated) for i in range(3)}
    assert stored_ids(sid) == expected
    rows = {r["request_id"]: r for r in owner_api.get("/api/v1/services/oipsvc/data/").json()["results"]}
    for rid in ("gw-oip", "gw-body", generated):
        for i, sent in enumerate(records):
            row, same = rows[f"{rid}#{i}"], rows[f"gw-score#{i}"]
            assert row["in_age"] == sent["age"] and row["in_state"] == sent["state"]  # one column per schema field
            assert row["inputs.age"] == sent["age"]  # what score.py's ModelDataCollector collected
            assert json.loads(row["prediction"]) == json.loads(same["prediction"]) == predictions[i]
            assert row["revision"] == 1 and row["model_version"].startswith("model.pkl:")
    # Ground truth by the id the OIP answer carried joins its rows.
    labels = [{"request_id": f"gw-oip#{i}", "label": str(p)} for i, p in enumerate(predictions)]
    answer = owner_api.post("/api/v1/services/oipsvc/ground-truth/", {"labels": labels}, format="json")
    assert answer.status_code == 200 and answer.json()["matched"] == 3, answer.content
    report = owner_api.get("/api/v1/services/oipsvc/ground-truth/").json()
    assert report["joined"] == 3 and report["overall"]["accuracy"] == 1.0


def call(replica: dict, key: str, n: int, prefix: str) -> None:
    connection = http.client.HTTPConnection(replica["host"], replica["port"], timeout=30)
    try:
        for i in range(n):
            connection.request("POST", "/score", body=json.dumps(SAMPLE_REQUEST), headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {key}", "X-Request-Id": f"{prefix}{i}"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200
    finally:
        connection.close()


def test_rows_a_full_spool_dropped_are_counted_on_the_data_tab_and_the_api(deploy_worker, owner, owner_api, create_realtime,
                                                                          settings, live_server, watched_page, csp_reports):
    """The collector falls behind a replica (80 calls between two pulls, a bound of 50 rows): the
    30 oldest are dropped; the count reaches the service's Capture, the API and the Data tab."""
    from monitoring import worker

    service, key = deployed(owner_api, create_realtime, "dropsvc")
    sid, replica = service["id"], service["containers"][0]
    settings.MLPORTAL_CAPTURE_SPOOL_ROWS = 50  # the bound goes to the running replica with the next pull
    capture_on(owner_api, "dropsvc")
    call(replica, key, 80, "drop-")
    worker.collect_all()
    assert stored_ids(sid) == {f"drop-{i}" for i in range(30, 80)}  # the oldest went
    summary = owner_api.get("/api/v1/services/dropsvc/data/summary/").json()
    assert (summary["dropped"], summary["total_rows"]) == (30, 50), summary
    assert owner_api.get("/api/v1/services/dropsvc/").json()["capture"]["dropped"] == 30
    # Kept up with: nothing more dropped. Behind again: the count grows by what went.
    call(replica, key, 40, "kept-")
    worker.collect_all()
    assert owner_api.get("/api/v1/services/dropsvc/data/summary/").json()["dropped"] == 30
    call(replica, key, 60, "late-")
    worker.collect_all()
    summary = owner_api.get("/api/v1/services/dropsvc/data/summary/").json()
    assert (summary["dropped"], summary["total_rows"]) == (40, 140), summary

    page, problems = watched_page(owner)
    page.goto(f"{live_server.url}/services/{sid}/")
    page.click("button[data-tab=data]")
    page.wait_for_function("() => document.querySelector('[data-module=service-data]').dataset.loaded === 'true'")
    assert page.inner_text("[data-testid=data-dropped]") == "40" and page.inner_text("[data-testid=data-total]") == "140"
    # Chromium aborts its requests in flight with ERR_NETWORK_CHANGED whenever the engine adds or
    # removes a container's interface on this shared host: that is the host, not the page.
    problems.console_errors[:] = [e for e in problems.console_errors if "net::ERR_NETWORK_CHANGED" not in e]
    problems.assert_none()
    assert csp_reports() == []
