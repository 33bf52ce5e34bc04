"""Issue 16 end to end on one deployed churn service (real Docker engine, real worker, the `mlportal`
command against the live portal): the template's score.py with ModelDataCollector, batches stored
one row per record, `service data`, drift of age + 30 against the template's CSV with `service
drift`, ground truth by the X-Request-Id the container answered, with `service ground-truth`."""
from __future__ import annotations

import csv
import http.client
import io
import json

import pytest

from tests.cli.conftest import assert_one_error_line
from tests.deployments.conftest import wait_for
from tests.helpers import wait_until
from tests.monitoring.test_monitoring_data import REFERENCE_PATH, churn_records

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def send(replica: dict, key: str, batches: list[list[dict]], prefix: str) -> list[tuple[str, list]]:
    """Each batch as one scoring call straight to the replica; (request id answered, predictions)."""
    connection = http.client.HTTPConnection(replica["host"], replica["port"], timeout=30)
    out = []
    try:
        for i, batch in enumerate(batches):
            connection.request("POST", "/score", body=json.dumps({"input_df": batch}), headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {key}", "X-Request-Id": f"{prefix}{i}"})
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200, body
            predictions = json.loads(json.loads(body)) if body.startswith(b'"[') else json.loads(body)
            out.append((response.getheader("X-Request-Id"), predictions if isinstance(predictions, list) else [predictions]))
    finally:
        connection.close()
    return out


def test_collector_drift_and_ground_truth_on_a_real_service(deploy_worker, create_realtime, owner_api, owner, workspace,
                                                            cli, login, outsider_api):
    from monitoring.models import CapturedRow
    from monitoring.worker import collect_capture
    from runs.services import project_create

    created = create_realtime(owner_api, "collectsvc")
    assert created.status_code in (201, 202), created.content
    service = wait_for(owner_api, "collectsvc", ("healthy", "failed"))
    assert service["status"] == "healthy", service
    replica, sid = service["containers"][0], service["id"]
    key = owner_api.get("/api/v1/services/collectsvc/keys/").json()["primary"]
    project_create(workspace=workspace, name="churn", user=owner, template="churn")
    login(owner)

    # Sampling outside 0-100 from the CLI: one line saying what to change, nothing changed.
    for bad in ("150", "-1"):
        assert_one_error_line(cli("service", "update", "-n", "collectsvc", "--capture", "both", "--capture-percent", bad),
                              contains="from 0 to 100")
    assert owner_api.get("/api/v1/services/collectsvc/").json()["capture"]["mode"] == "off"
    # Capture on through the CLI; the worker's next pull carries it to the running replica.
    assert cli("service", "update", "-n", "collectsvc", "--capture", "both", "--capture-percent", "100").code == 0
    collect_capture.delay()
    records = churn_records(400, seed=11, shift_age=30)
    batches = [records[i:i + 40] for i in range(0, 400, 40)]

    def sampled():  # the replica re-reads the switch within a second of the pull
        answer = send(replica, key, [batches[0][:1]], "probe-")
        collect_capture.delay()
        return CapturedRow.objects.filter(service_id=sid, request_id=answer[0][0]).exists()

    wait_until(sampled, timeout=60, interval=1.0, message="capture to reach the replica")
    answered = send(replica, key, batches, "shifted-")
    assert [rid for rid, _ in answered] == [f"shifted-{i}" for i in range(10)]
    expected = {f"shifted-{i}#{j}" for i in range(10) for j in range(40)}
    collect_capture.delay()
    wait_until(lambda: expected <= set(CapturedRow.objects.filter(service_id=sid).values_list("request_id", flat=True)),
               timeout=60, interval=0.5, message="the worker to store the 400 records")

    # `service data -o csv`: one row per record, the schema's fields and what ModelDataCollector collected.
    out = cli("service", "data", "-n", "collectsvc", "-o", "csv")
    assert out.code == 0, out.err
    rows = [r for r in csv.DictReader(io.StringIO(out.out)) if r["request_id"].startswith("shifted-")]
    assert len(rows) == 400 and {r["request_id"] for r in rows} == expected
    by_id = {r["request_id"]: r for r in rows}
    first = by_id["shifted-3#7"]
    assert int(first["in_age"]) == batches[3][7]["age"] and int(first["inputs.age"]) == batches[3][7]["age"]
    assert json.loads(first["prediction"]) == answered[3][1][7]
    assert str(first["prediction.prediction"]) == str(answered[3][1][7])
    table = cli("service", "data", "-n", "collectsvc", "--top", "5")
    assert table.code == 0 and "request_id" in table.out.splitlines()[0]
    assert_one_error_line(cli("service", "data", "-n", "collectsvc", "--since", "2026-12-02", "--until", "2026-12-01"),
                          contains="since must be before until")

    # Drift of age + 30 against the template's training CSV: age, and only age.
    assert_one_error_line(cli("service", "drift", "-n", "collectsvc", "--reference-file", "churn:data/nope.csv"),
                          contains="no file")
    drift = cli("service", "drift", "-n", "collectsvc", "--reference-file", f"churn:{REFERENCE_PATH}", "-o", "json")
    assert drift.code == 0, drift.err
    report = json.loads(drift.out)
    assert report["drifted_features"] == ["age"], [(f["name"], f["score"]) for f in report["features"] if f["drifted"]]
    assert report["current_rows"] == 401  # the probe record too
    shown = cli("service", "drift", "-n", "collectsvc", "--show")
    assert shown.code == 0 and "age" in shown.out and "yes" in shown.out

    # Ground truth by the ids the container answered: label = the prediction for batches 0-4,
    # the opposite for 5-9 (so accuracy 0.5), plus one unknown id.
    labels = io.StringIO()
    labels.write("request_id,label\n")
    for i, (rid, predictions) in enumerate(answered):
        for j, predicted in enumerate(predictions):
            truth = predicted if i < 5 else str(1 - int(predicted))
            labels.write(f"{rid}#{j},{truth}\n")
    labels.write("never-sent,1\n")
    (cli.home / "labels.csv").write_text(labels.getvalue())
    result = cli("service", "ground-truth", "-n", "collectsvc", "--file", "labels.csv", "-o", "json")
    assert result.code == 0, result.err
    assert "400 labels stored" not in result.err and "401 labels stored; 1 match no captured request yet" in result.err
    report = json.loads(result.out)
    assert report["kind"] == "classification" and report["joined"] == 400
    assert report["overall"]["accuracy"] == pytest.approx(0.5)
    (day,) = report["by_day"]
    assert day["model_version"].startswith("model.pkl:") and day["n"] == 400
    (cli.home / "bad.csv").write_text("request_id,label\nshifted-0#0,1\nshifted-0#1\n")
    assert_one_error_line(cli("service", "ground-truth", "-n", "collectsvc", "--file", "bad.csv"), contains="Line 3")

    # An outsider sees none of it.
    for path in ("data/", "data/summary/", "drift/", "ground-truth/"):
        assert outsider_api.get(f"/api/v1/services/{sid}/{path}").status_code == 404
