"""The runs API: submit (with 400s naming an unknown script or target), list with filters, metric
columns and ordering, detail, live log, cancel, metrics, outputs, compare; outsiders 404, readers 403."""
from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from core.storage import open_file
from runs import services, worker
from runs.models import Run

pytestmark = pytest.mark.django_db


def test_submitting_a_run_snapshots_the_project_and_queues_it(owner_api, churn):
    res = owner_api.post("/api/v1/runs/", {"project": "churn_prediction", "script": "CATelcoCustomerChurnModelingWithoutDprep.py",
                                           "target": "docker"}, format="json")
    assert res.status_code == 201, res.json()
    body = res.json()
    assert body["status"] == "queued" and body["number"] == 1 and body["name"] == "churn_prediction #1"
    run = Run.objects.get(id=body["id"])
    assert len(run.snapshot_sha256) == 64
    with open_file(run.snapshot) as handle, tarfile.open(fileobj=io.BytesIO(handle.read())) as tar:
        assert "data/CATelcoCustomerChurnTrainingSample.csv" in tar.getnames()
    second = owner_api.post("/api/v1/runs/", {"project": str(churn.id), "script": "score.py", "args": ["--x", "1"]}, format="json")
    assert second.json()["number"] == 2 and second.json()["args"] == ["--x", "1"]
    assert second.json()["target"] == "docker"  # the project's default


def test_an_unknown_script_is_a_400_naming_it_and_listing_the_scripts(owner_api, churn):
    res = owner_api.post("/api/v1/runs/", {"project": "churn_prediction", "script": "nope.py"}, format="json")
    assert res.status_code == 400
    error = res.json()["error"]
    assert "nope.py" in error["message"] and "score.py" in error["message"] and error["fields"]["script"]
    assert not Run.objects.exists()


def test_an_unknown_target_is_a_400_naming_it(owner_api, churn):
    res = owner_api.post("/api/v1/runs/", {"project": "churn_prediction", "script": "score.py", "target": "cluster"}, format="json")
    assert res.status_code == 400 and "cluster" in res.json()["error"]["message"]
    assert res.json()["error"]["fields"]["target"]


def test_args_that_are_not_a_list_are_a_400(owner_api, churn):
    res = owner_api.post("/api/v1/runs/", {"project": "churn_prediction", "script": "score.py", "args": "--x 1"}, format="json")
    assert res.status_code == 400 and "args" in res.json()["error"]["fields"]


def test_an_unknown_project_is_a_404(owner_api, churn):
    assert owner_api.post("/api/v1/runs/", {"project": "ghost", "script": "a.py"}, format="json").status_code == 404


def test_prepare_creates_a_prepare_run(owner_api, churn):
    res = owner_api.post(f"/api/v1/projects/{churn.id}/prepare/", {"target": "docker"}, format="json")
    assert res.status_code == 201 and res.json()["kind"] == "prepare"
    assert owner_api.post(f"/api/v1/projects/{churn.id}/prepare/", {"target": "local"}, format="json").status_code == 400


def test_the_list_shows_last_metric_values_and_sorts_and_filters_by_a_metric(owner_api, owner, blank, finished_run):
    low = finished_run(blank, owner, metrics={"DTree Accuracy": 0.71, "Naive Bayes Accuracy": 0.6})
    high = finished_run(blank, owner, metrics={"DTree Accuracy": [(0, 0.5), (1, 0.93)]})
    none = finished_run(blank, owner, metrics={})
    body = owner_api.get("/api/v1/runs/?ordering=-metric:DTree Accuracy").json()
    assert [r["id"] for r in body["results"]] == [str(high.id), str(low.id), str(none.id)]
    assert body["results"][0]["metrics"] == {"DTree Accuracy": 0.93}
    body = owner_api.get("/api/v1/runs/?ordering=metric:DTree Accuracy").json()
    assert [r["id"] for r in body["results"]][:2] == [str(low.id), str(high.id)]
    body = owner_api.get("/api/v1/runs/?metric=DTree Accuracy&metric_gt=0.8").json()
    assert [r["id"] for r in body["results"]] == [str(high.id)]
    res = owner_api.get("/api/v1/runs/?metric=DTree Accuracy&metric_gt=high")
    assert res.status_code == 400 and "high" in res.json()["error"]["message"]


def test_the_list_filters_by_project_script_status_user_and_target(owner_api, owner, contributor, blank, churn, finished_run):
    services.project_file_put(project=blank, path="other.py", content=b"", user=owner)
    a = finished_run(blank, owner)
    b = finished_run(blank, contributor, script="other.py", status=Run.Status.FAILED)

    def ids(query):
        res = owner_api.get(f"/api/v1/runs/?{query}")
        assert res.status_code == 200, res.json()
        return {r["id"] for r in res.json()["results"]}

    assert ids("project=scratch") == {str(a.id), str(b.id)}
    assert ids("project=churn_prediction") == set()
    assert ids("script=other.py") == {str(b.id)}
    assert ids("status=failed") == {str(b.id)}
    assert ids("user=carl") == {str(b.id)}
    assert ids("target=local") == set()
    assert ids("q=other") == {str(b.id)}
    assert owner_api.get("/api/v1/runs/?ordering=bogus").status_code == 400
    assert [r["id"] for r in owner_api.get("/api/v1/runs/?ordering=number").json()["results"]] == [str(a.id), str(b.id)]
    assert owner_api.get("/api/v1/runs/?ordering=-duration").status_code == 200


def test_the_detail_has_metrics_duration_and_outputs_count(owner_api, owner, blank, finished_run):
    run = finished_run(blank, owner, metrics={"acc": 0.5}, outputs={"model.pkl": b"PICKLE", "plots/a.png": b"\x89PNG"})
    body = owner_api.get(f"/api/v1/runs/{run.id}/").json()
    assert body["metrics"] == {"acc": 0.5} and body["outputs_count"] == 2 and body["duration_s"] >= 0
    assert body["status"] == "completed" and body["exit_code"] == 0


def test_the_log_endpoint_pages_through_the_log_by_offset(owner_api, owner, blank, finished_run):
    run = finished_run(blank, owner, log=["first line", "second <b>line</b>"])
    worker.run_append_log(run_id=run.id, workspace_id=run.workspace_id, lines=["third"])
    body = owner_api.get(f"/api/v1/runs/{run.id}/log/?offset=0").json()
    assert body["text"] == "first line\nsecond <b>line</b>\nthird\n" and body["done"] is True and body["status"] == "completed"
    again = owner_api.get(f"/api/v1/runs/{run.id}/log/?offset={body['offset']}").json()
    assert again["text"] == "" and again["done"] is True and again["offset"] == body["offset"]
    res = owner_api.get(f"/api/v1/runs/{run.id}/log.txt")
    assert res["Content-Disposition"].startswith("attachment") and res["X-Content-Type-Options"] == "nosniff"
    assert b"".join(res.streaming_content).decode() == body["text"]
    assert owner_api.get(f"/api/v1/runs/{run.id}/log/?offset=x").status_code == 400


def test_the_log_of_an_active_run_is_not_done(owner_api, owner, churn):
    run = services.run_submit(project=churn, script="score.py", user=owner)
    body = owner_api.get(f"/api/v1/runs/{run.id}/log/").json()
    assert body == {**body, "text": "", "done": False, "status": "queued"}


def test_outputs_are_listed_downloaded_as_attachments_and_zipped(owner_api, owner, blank, finished_run):
    run = finished_run(blank, owner, outputs={"model.pkl": b"PICKLE", "page.html": b"<script>alert(1)</script>"})
    listing = owner_api.get(f"/api/v1/runs/{run.id}/outputs/").json()["results"]
    assert [(o["path"], o["size"]) for o in listing] == [("model.pkl", 6), ("page.html", 25)]
    res = owner_api.get(f"/api/v1/runs/{run.id}/outputs/page.html")
    assert res.status_code == 200 and res["Content-Disposition"].startswith("attachment")
    assert res["X-Content-Type-Options"] == "nosniff"
    assert owner_api.get(f"/api/v1/runs/{run.id}/outputs/outputs/model.pkl").status_code == 200
    assert owner_api.get(f"/api/v1/runs/{run.id}/outputs/missing.bin").status_code == 404
    res = owner_api.get(f"/api/v1/runs/{run.id}/outputs.zip")
    with zipfile.ZipFile(io.BytesIO(b"".join(res.streaming_content))) as z:
        assert sorted(z.namelist()) == ["outputs/model.pkl", "outputs/page.html"]
        assert z.read("outputs/model.pkl") == b"PICKLE"


def test_metrics_endpoint_lists_every_point(owner_api, owner, blank, finished_run):
    run = finished_run(blank, owner, metrics={"loss": [(0, 1.0), (1, 0.5), (2, 0.25)], "note": "ok"})
    body = owner_api.get(f"/api/v1/runs/{run.id}/metrics/?name=loss").json()
    assert [(m["step"], m["value"]) for m in body["results"]] == [(0, 1.0), (1, 0.5), (2, 0.25)]
    body = owner_api.get(f"/api/v1/runs/{run.id}/metrics/?name=note").json()
    assert body["results"][0]["text"] == "ok" and body["results"][0]["value"] is None


def test_cancel_ends_a_queued_run_and_refuses_a_finished_one(owner_api, owner, churn, blank, finished_run):
    run = services.run_submit(project=churn, script="score.py", user=owner)
    res = owner_api.post(f"/api/v1/runs/{run.id}/cancel/")
    assert res.status_code == 200 and res.json()["status"] == "canceled"
    assert owner_api.post(f"/api/v1/runs/{run.id}/cancel/").status_code == 409
    done = finished_run(blank, owner)
    assert owner_api.post(f"/api/v1/runs/{done.id}/cancel/").status_code == 409


def test_compare_puts_runs_side_by_side_and_marks_differences(owner_api, owner, blank, finished_run):
    a = finished_run(blank, owner, metrics={"acc": 0.7}, outputs={"model.pkl": b"A"}, args=["--depth", "3"])
    b = finished_run(blank, owner, metrics={"acc": 0.9, "loss": [(0, 1.0), (1, 0.4)]}, outputs={"model.pkl": b"B"}, args=["--depth", "5"])
    body = owner_api.get(f"/api/v1/runs/compare/?ids={a.id},{b.id}").json()
    acc = next(m for m in body["metrics"] if m["name"] == "acc")
    assert acc["values"] == [0.7, 0.9] and acc["differs"] and acc["best"] == 0.9
    args = next(p for p in body["properties"] if p["name"] == "Arguments")
    assert args["values"] == ["--depth 3", "--depth 5"] and args["differs"]
    assert body["outputs"][0]["path"] == "model.pkl" and body["outputs"][0]["differs"]
    assert body["series"][str(b.id)]["loss"] == {"steps": [0, 1], "values": [1.0, 0.4], "points": 2, "sampled": False}
    assert owner_api.get(f"/api/v1/runs/compare/?ids={a.id}").status_code == 400


def test_outsider_gets_404_on_every_run_endpoint(outsider_api, owner, blank, finished_run):
    run = finished_run(blank, owner, outputs={"model.pkl": b"A"})
    other = finished_run(blank, owner)
    for method, url in [("get", f"/api/v1/runs/{run.id}/"), ("get", f"/api/v1/runs/{run.id}/log/"),
                        ("get", f"/api/v1/runs/{run.id}/log.txt"), ("post", f"/api/v1/runs/{run.id}/cancel/"),
                        ("get", f"/api/v1/runs/{run.id}/metrics/"), ("get", f"/api/v1/runs/{run.id}/outputs/"),
                        ("get", f"/api/v1/runs/{run.id}/outputs/model.pkl"), ("get", f"/api/v1/runs/{run.id}/outputs.zip"),
                        ("get", f"/api/v1/runs/compare/?ids={run.id},{other.id}")]:
        assert getattr(outsider_api, method)(url).status_code == 404, url
    assert outsider_api.get("/api/v1/runs/").json()["count"] == 0
    assert outsider_api.post("/api/v1/runs/", {"project": str(blank.id), "script": "train.py"}, format="json").status_code == 404


def test_reader_sees_runs_but_gets_403_on_submit_and_cancel(reader_api, owner, churn):
    run = services.run_submit(project=churn, script="score.py", user=owner)
    assert reader_api.get(f"/api/v1/runs/{run.id}/").status_code == 200
    res = reader_api.post("/api/v1/runs/", {"project": "churn_prediction", "script": "score.py"}, format="json")
    assert res.status_code == 403 and "contributor" in res.json()["error"]["message"]
    assert reader_api.post(f"/api/v1/runs/{run.id}/cancel/").status_code == 403
    assert Run.objects.get(id=run.id).status == "queued"
