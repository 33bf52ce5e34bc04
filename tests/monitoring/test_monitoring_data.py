"""Issue 16, what the portal does with captured rows: one column per input field, download, the
Data tab's summary, "add to project", drift against the churn CSV, ground truth, retention, bad
input and outsiders. The rows go through the worker's real store (Parquet files, the dedupe index)
exactly as a pull hands them over; the pull itself is tested against real containers in
test_capture_service.py and test_collector_service.py."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import random

import pytest

from tests.runtime.conftest import TEMPLATE

CHURN_CSV = TEMPLATE / "data" / "CATelcoCustomerChurnTrainingSample.csv"
REFERENCE_PATH = "data/CATelcoCustomerChurnTrainingSample.csv"

pytestmark = pytest.mark.django_db


@pytest.fixture
def capture_dir(settings, tmp_path):
    """A capture storage of the test's own (so a test sees exactly the files it made)."""
    folder = tmp_path / "capture"
    settings.STORAGES = {**settings.STORAGES, "capture": {
        "BACKEND": "core.filestorage.PortalFileSystemStorage", "OPTIONS": {"location": folder}}}
    return folder


def make_capturing_service(workspace, owner):
    """A healthy service 'churnpred' (rows only, no container) capturing everything."""
    from deployments.models import Environment, Service
    from monitoring.models import Capture
    from registry.models import Image, Manifest

    environment = Environment.objects.create(workspace=workspace, name="local")
    manifest = Manifest.objects.create(workspace=workspace, name="churn", version=1, content_hash="0" * 64)
    image = Image.objects.create(workspace=workspace, name="churn", version=1, manifest=manifest, tag="t:1", status="succeeded")
    service = Service.objects.create(workspace=workspace, name="churnpred", environment=environment, image=image,
                                     status="healthy", created_by=owner)
    Capture.objects.create(service=service, mode="both", percent=100)
    return service


@pytest.fixture
def service(workspace, owner, capture_dir):
    return make_capturing_service(workspace, owner)


@pytest.fixture
def churn_project(workspace, owner):
    from runs.services import project_create

    return project_create(workspace=workspace, name="churn", user=owner, template="churn")


def churn_records(n: int, *, seed: int, shift_age: int = 0) -> list[dict]:
    with open(CHURN_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked = random.Random(seed).sample(rows, n)
    out = []
    for row in picked:
        record = {}
        for key, value in row.items():
            try:
                record[key] = int(value)
            except ValueError:
                try:
                    record[key] = float(value)
                except ValueError:
                    record[key] = value
        record["age"] += shift_age
        out.append(record)
    return out


def check_drift_now(api, capture_callbacks, ref: str = "churnpred") -> dict:
    """``POST drift/`` answers a queued job at once; the test then plays the maintenance worker
    (the task, in this process, with its commit callbacks: the drift signal) and returns the
    finished job, its report under ``report``. test_drift_jobs.py runs it on the real worker."""
    from monitoring.tasks import compute_drift_job

    with capture_callbacks() as enqueued:
        answer = api.post(f"/api/v1/services/{ref}/drift/", {}, format="json")
    assert answer.status_code == 202, answer.content
    job = answer.json()
    assert job["status"] == "queued" and job["report"] is None and len(enqueued) == 1
    with capture_callbacks(execute=True):
        compute_drift_job(job["id"])
    return api.get(job["url"]).json()


def spool_row(request_id: str, records: list[dict], prediction, *, at: float, version: str = "model.pkl:1", **extra) -> dict:
    """A row as the scoring server's spool answers it to a pull."""
    return {"request_id": request_id, "time": at, "model_version": version, "latency_ms": 2.5,
            "inputs": {"input_df": records}, "prediction": prediction, **extra}


def test_a_batch_becomes_one_row_per_record_with_one_column_per_field(service):
    from monitoring import worker
    from monitoring.selectors import captured_rows

    records = churn_records(3, seed=1)
    collected = {"inputs": [{"age": r["age"]} for r in records], "prediction": [{"prediction": p} for p in (0, 1, 0)]}
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    assert worker.store(service, [spool_row("batch", records, ["0", "1", "0"], at=now, collected=collected),
                                  spool_row("single", records[:1], "1", at=now + 1)]) == 4
    rows = {r["request_id"]: r for r in captured_rows(service)}
    assert sorted(rows) == ["batch#0", "batch#1", "batch#2", "single"]
    for i in range(3):
        row = rows[f"batch#{i}"]
        assert {k[3:]: v for k, v in row.items() if k.startswith("in_")} == records[i]
        assert json.loads(row["prediction"]) == ["0", "1", "0"][i]
        assert row["inputs.age"] == records[i]["age"] and row["prediction.prediction"] == (0, 1, 0)[i]
    assert rows["single"]["in_state"] == records[0]["state"] and rows["single"]["inputs.age"] is None
    # Pulled again (no acknowledgement reached the replica): nothing is stored twice.
    assert worker.store(service, [spool_row("batch", records, ["0", "1", "0"], at=now)]) == 0


def test_the_download_returns_exactly_the_captured_rows(service, owner_api):
    import pyarrow.parquet as pq

    from monitoring import worker

    base = dt.datetime(2026, 11, 30, 22, 0, tzinfo=dt.timezone.utc).timestamp()
    records = churn_records(40, seed=2)
    worker.store(service, [spool_row(f"r{i}", [records[i]], str(i % 2), at=base + i * 300) for i in range(40)])  # over 2 days
    answer = owner_api.get("/api/v1/services/churnpred/data/?output=csv")
    assert answer.status_code == 200 and answer["Content-Type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(answer.content.decode())))
    assert [r["request_id"] for r in lines] == [f"r{i}" for i in range(40)]
    assert [int(r["in_age"]) for r in lines] == [r["age"] for r in records]
    # A time range: [since, until), across the day boundary.
    since, until = dt.datetime.fromtimestamp(base + 5 * 300, dt.timezone.utc), dt.datetime.fromtimestamp(base + 30 * 300, dt.timezone.utc)
    answer = owner_api.get("/api/v1/services/churnpred/data/", {"output": "parquet", "since": since.isoformat(), "until": until.isoformat()})
    assert answer.status_code == 200
    table = pq.read_table(io.BytesIO(answer.content))
    assert table.column("request_id").to_pylist() == [f"r{i}" for i in range(5, 30)]
    assert table.column("in_state").to_pylist() == [r["state"] for r in records[5:30]]
    for bad, field in (({"since": "2026-12-02", "until": "2026-12-01"}, "until"), ({"since": "yesterday"}, "since"),
                       ({"output": "xlsx"}, "output"), ({"limit": "0"}, "limit")):
        answer = owner_api.get("/api/v1/services/churnpred/data/", bad)
        assert answer.status_code == 400 and field in answer.json()["error"]["fields"], (bad, answer.content)


def test_the_summary_counts_rows_per_hour_and_shows_the_latest(service, owner_api):
    from monitoring import worker
    from monitoring.models import Capture

    now = dt.datetime.now(dt.timezone.utc)
    hour_ago = (now - dt.timedelta(hours=1)).timestamp()
    records = churn_records(8, seed=3)
    worker.store(service, [spool_row(f"old{i}", [records[i]], "0", at=hour_ago + i) for i in range(5)]
                 + [spool_row(f"new{i}", [records[5 + i]], "1", at=now.timestamp() - 3 + i) for i in range(3)])
    Capture.objects.filter(service=service).update(dropped=7)
    body = owner_api.get("/api/v1/services/churnpred/data/summary/").json()
    assert len(body["hours"]) == 48 and sum(h["rows"] for h in body["hours"]) == 8
    assert [h["rows"] for h in body["hours"][-2:]] == [5, 3] or [h["rows"] for h in body["hours"][-3:-1]] == [5, 3]
    assert body["dropped"] == 7 and body["total_rows"] == 8
    assert [r["request_id"] for r in body["latest"][:3]] == ["new2", "new1", "new0"]


def test_captured_rows_are_added_to_a_project_as_a_data_file(service, owner_api, churn_project):
    from monitoring import worker
    from runs.models import ProjectFile
    from core.storage import open_file

    records = churn_records(12, seed=4)
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    worker.store(service, [spool_row(f"p{i}", [records[i]], "0", at=now - 60 + i) for i in range(12)])
    answer = owner_api.post("/api/v1/services/churnpred/data/to-project/", {"project": "churn", "path": "data/captured.csv"}, format="json")
    assert answer.status_code == 201, answer.content
    assert answer.json()["rows"] == 12
    row = ProjectFile.objects.get(project=churn_project, path="data/captured.csv")
    with open_file(row.storage_name) as handle:
        lines = list(csv.DictReader(io.TextIOWrapper(handle, "utf-8")))
    assert [int(r["age"]) for r in lines] == [r["age"] for r in records]  # named as the schema names them
    assert "in_age" not in lines[0] and lines[0]["state"] == records[0]["state"]
    for bad, field in (({"project": "nope", "path": "data/x.csv"}, "project"), ({"project": "churn", "path": "data/x.txt"}, "path"),
                       ({"project": "churn", "path": "data/x.csv", "since": "2020-01-02", "until": "2020-01-01"}, "until"),
                       ({"project": "churn", "path": "data/x.csv", "until": "2020-01-01"}, "since")):
        answer = owner_api.post("/api/v1/services/churnpred/data/to-project/", bad, format="json")
        assert answer.status_code == 400 and field in answer.json()["error"]["fields"], (bad, answer.content)
    assert not ProjectFile.objects.filter(project=churn_project, path="data/x.csv").exists()


def test_age_shifted_by_30_is_flagged_as_drifted_on_age_alone(service, owner_api, churn_project, django_capture_on_commit_callbacks):
    from deployments.models import ServiceEvent
    from monitoring import worker
    from monitoring.models import DriftReport, DriftSettings
    from monitoring.signals import drift_detected
    from workspaces.models import Activity

    now = dt.datetime.now(dt.timezone.utc).timestamp()
    records = churn_records(500, seed=5, shift_age=30)
    worker.store(service, [spool_row(f"d{i // 50}", records[i - i % 50:i - i % 50 + 50], "0", at=now - 600 + i // 50)
                           for i in range(0, 500, 50)])
    # Bad settings first: each names what to change, and nothing is saved.
    for bad, field in (({"reference": "file", "project": "churn", "path": "data/missing.csv"}, "path"),
                       ({"reference": "file", "project": "nope", "path": REFERENCE_PATH}, "project"),
                       ({"reference": "window", "window_start": "2026-12-02", "window_end": "2026-12-01"}, "window_end"),
                       ({"reference": "everything"}, "reference"), ({"share_threshold": 2}, "share_threshold"),
                       ({"feature_threshold": "high"}, "feature_threshold"), ({"colour": "red"}, "colour")):
        answer = owner_api.patch("/api/v1/services/churnpred/drift/", bad, format="json")
        assert answer.status_code == 400 and field in answer.json()["error"]["fields"], (bad, answer.content)
    assert not DriftSettings.objects.exists()
    assert owner_api.post("/api/v1/services/churnpred/drift/", {}, format="json").status_code == 400  # no reference yet

    heard = []

    def listen(sender, **kwargs):
        heard.append(kwargs)

    drift_detected.connect(listen, dispatch_uid="test-drift")
    try:
        answer = owner_api.patch("/api/v1/services/churnpred/drift/",
                                 {"reference": "file", "project": "churn", "path": REFERENCE_PATH}, format="json")
        assert answer.status_code == 200, answer.content
        job = check_drift_now(owner_api, django_capture_on_commit_callbacks)
        assert job["status"] == "succeeded" and job["progress"] == 1.0, job
        report = job["report"]
        drifted = [(f["name"], f["score"], f["p_value"]) for f in report["features"] if f["drifted"]]
        assert report["drifted_features"] == ["age"], drifted
        assert report["current_rows"] == 500 and report["reference_rows"] == 20000
        features = {f["name"]: f for f in report["features"]}
        assert features["age"]["kind"] == "numeric" and features["age"]["score"] > 1 and features["age"]["p_value"] < 1e-6
        assert features["state"]["kind"] == "categorical" and not features["state"]["drifted"]
        histogram = features["age"]["histogram"]
        assert len(histogram["edges"]) == len(histogram["reference"]) + 1 and abs(sum(histogram["current"]) - 1) < 1e-6
        judged = [f for f in report["features"] if f["score"] is not None]
        assert report["share_drifted"] == pytest.approx(1 / len(judged))
        # 1 feature of 28 is under the default share threshold 0.3: no drift event.
        assert report["drifted"] is False and heard == []
        assert not ServiceEvent.objects.filter(service=service, message__startswith="Drift").exists()
        # The service's own threshold: 2% of features is news.
        assert owner_api.patch("/api/v1/services/churnpred/drift/", {"share_threshold": 0.02}, format="json").status_code == 200
        report = check_drift_now(owner_api, django_capture_on_commit_callbacks)["report"]
    finally:
        drift_detected.disconnect(dispatch_uid="test-drift")
    assert report["drifted"] is True
    event = ServiceEvent.objects.get(service=service, message__startswith="Drift")
    assert "age" in event.message and event.level == "warning"
    assert Activity.objects.filter(verb="service.drift_detected").count() == 1
    assert len(heard) == 1 and heard[0]["service"].pk == service.pk and heard[0]["trigger"] == "demand"
    assert heard[0]["report"].pk == report["id"]
    # The retraining pipelines subscribe to the same signal (pipelines/signals.py), exactly once.
    from pipelines.signals import _drift_receiver

    assert [r for r in drift_detected._live_receivers(DriftReport)[0] if r is _drift_receiver] == [_drift_receiver]
    # The same episode again (still drifted) raises no second event; the schedule computes too.
    assert worker.compute_scheduled_drift() == 1
    assert ServiceEvent.objects.filter(service=service, message__startswith="Drift").count() == 1
    assert DriftReport.objects.filter(service=service, trigger="schedule").count() == 1
    body = owner_api.get("/api/v1/services/churnpred/drift/").json()
    assert body["settings"]["path"] == REFERENCE_PATH and body["latest"]["drifted_features"] == ["age"]


def test_a_capture_window_is_a_reference_too(service, owner_api, django_capture_on_commit_callbacks):
    from monitoring import worker

    now = dt.datetime.now(dt.timezone.utc)
    week_ago = now - dt.timedelta(days=7)
    old = churn_records(300, seed=6)
    new = churn_records(300, seed=7, shift_age=30)
    worker.store(service, [spool_row(f"w{i}", old[i * 30:(i + 1) * 30], "0", at=week_ago.timestamp() + i) for i in range(10)]
                 + [spool_row(f"n{i}", new[i * 30:(i + 1) * 30], "0", at=now.timestamp() - 100 + i) for i in range(10)])
    answer = owner_api.patch("/api/v1/services/churnpred/drift/", {
        "reference": "window", "window_start": (week_ago - dt.timedelta(hours=1)).isoformat(),
        "window_end": (week_ago + dt.timedelta(hours=1)).isoformat()}, format="json")
    assert answer.status_code == 200, answer.content
    report = check_drift_now(owner_api, django_capture_on_commit_callbacks)["report"]
    assert report["drifted_features"] == ["age"] and report["reference_rows"] == 300 and report["reference"].startswith("capture")


def test_ground_truth_joined_by_request_id_gives_the_accuracy(service, owner_api):
    from monitoring import worker
    from monitoring.models import GroundTruth

    records = churn_records(20, seed=8)
    day1 = dt.datetime(2026, 11, 29, 12, tzinfo=dt.timezone.utc).timestamp()
    day2 = dt.datetime(2026, 11, 30, 12, tzinfo=dt.timezone.utc).timestamp()
    worker.store(service, [spool_row(f"g{i}", [records[i]], "1" if i % 2 else "0", at=day1 + i) for i in range(10)]
                 + [spool_row(f"h{i}", [records[10 + i]], "1", at=day2 + i, version="model.pkl:2") for i in range(10)])
    # Day 1: labels all 0, so the 5 predicted 0 are right (0.5). Day 2, version 2: 8 of 10 labelled 1 (0.8).
    body = "request_id,label\n" + "".join(f"g{i},0\n" for i in range(10)) + "".join(f"h{i},{1 if i < 8 else 0}\n" for i in range(10))
    body += "nobody-1,1\n"
    answer = owner_api.post("/api/v1/services/churnpred/ground-truth/", {"file": _upload("labels.csv", body)}, format="multipart")
    assert answer.status_code == 200, answer.content
    assert answer.json() | {"unknown_request_ids": None} == {"received": 21, "stored": 21, "matched": 20, "unknown": 1,
                                                              "unknown_request_ids": None}
    assert answer.json()["unknown_request_ids"] == ["nobody-1"]
    report = owner_api.get("/api/v1/services/churnpred/ground-truth/").json()
    assert report["kind"] == "classification" and report["joined"] == 20
    assert report["by_day"] == [{"day": "2026-11-29", "model_version": "model.pkl:1", "n": 10, "accuracy": 0.5},
                                {"day": "2026-11-30", "model_version": "model.pkl:2", "n": 10, "accuracy": 0.8}]
    assert report["overall"]["accuracy"] == pytest.approx(0.65)
    # POSTed pairs replace earlier labels: g0..g9 all 1 now, so day 1 is 0.5 still (the other five).
    answer = owner_api.post("/api/v1/services/churnpred/ground-truth/",
                            {"labels": [{"request_id": f"g{i}", "label": "1"} for i in range(10)]}, format="json")
    assert answer.status_code == 200 and answer.json()["matched"] == 10
    assert GroundTruth.objects.filter(service=service).count() == 21
    # Malformed lines: 400 naming the line; nothing of the file is stored.
    before = list(GroundTruth.objects.order_by("request_id").values_list("request_id", "label"))
    for bad, words in (("request_id,label\nx1,0\nx2,0,extra\n", "Line 3"), ("x1,0\nbad id,1\n", "Line 2"),
                       ("x1,\n", "Line 1"), ("", "no request_id")):
        answer = owner_api.post("/api/v1/services/churnpred/ground-truth/", {"file": _upload("l.csv", bad)}, format="multipart")
        assert answer.status_code == 400 and words in answer.json()["error"]["message"], (bad, answer.content)
    answer = owner_api.post("/api/v1/services/churnpred/ground-truth/", {"labels": [{"request_id": "x", "label": {"a": 1}}]}, format="json")
    assert answer.status_code == 400 and "labels[0]" in answer.json()["error"]["message"]
    assert list(GroundTruth.objects.order_by("request_id").values_list("request_id", "label")) == before


def test_ground_truth_of_a_regression_gives_the_mae(service, owner_api):
    from monitoring import worker

    records = churn_records(4, seed=9)
    at = dt.datetime(2026, 11, 29, 12, tzinfo=dt.timezone.utc).timestamp()
    worker.store(service, [spool_row(f"m{i}", [records[i]], 10.5 + i, at=at + i) for i in range(4)])
    owner_api.post("/api/v1/services/churnpred/ground-truth/",
                   {"labels": [[f"m{i}", 10.0 + 2 * i] for i in range(4)]}, format="json")
    report = owner_api.get("/api/v1/services/churnpred/ground-truth/").json()
    # |10.5-10| + |11.5-12| + |12.5-14| + |13.5-16| = 0.5 + 0.5 + 1.5 + 2.5 = 5 → MAE 1.25
    assert report["kind"] == "regression" and report["by_day"][0]["mae"] == pytest.approx(1.25)
    forced = owner_api.get("/api/v1/services/churnpred/ground-truth/?kind=classification").json()
    assert forced["kind"] == "classification" and forced["overall"]["accuracy"] == 0.0
    assert owner_api.get("/api/v1/services/churnpred/ground-truth/?kind=both").status_code == 400


def _upload(name: str, text: str):
    handle = io.BytesIO(text.encode())
    handle.name = name
    return handle


def test_retention_deletes_partitions_older_than_the_workspaces_setting(service, owner_api, workspace, capture_dir):
    from monitoring import worker
    from monitoring.models import CapturedRow, CaptureFile
    from retention.worker import retention_apply

    today = dt.datetime.now(dt.timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)
    records = churn_records(3, seed=10)
    for days, rid in ((40, "old"), (10, "mid"), (0, "new")):
        worker.store(service, [spool_row(rid, [records[0]], "0", at=(today - dt.timedelta(days=days)).timestamp())])
    old_file = capture_dir / CaptureFile.objects.get(day=(today - dt.timedelta(days=40)).date()).path
    assert old_file.exists()
    answer = owner_api.patch("/api/v1/storage/retention/", {"capture_keep_days": 30}, format="json")
    assert answer.status_code == 200, answer.content
    bad = owner_api.patch("/api/v1/storage/retention/", {"capture_keep_days": -3}, format="json")
    assert bad.status_code == 400 and "capture_keep_days" in bad.json()["error"]["fields"]
    summary = retention_apply(workspace_id=workspace.pk)
    assert summary["capture_rows"] == 1
    assert sorted(CapturedRow.objects.values_list("request_id", flat=True)) == ["mid", "new"]
    assert not old_file.exists() and not old_file.parent.exists()
    assert sorted(r["request_id"] for r in owner_api.get("/api/v1/services/churnpred/data/").json()["results"]) == ["mid", "new"]


def test_an_outsider_gets_404_on_every_data_endpoint(service, outsider_api, reader_api):
    from monitoring.models import DriftJob

    sid = str(service.pk)
    job = DriftJob.objects.create(service=service)
    for ref in ("churnpred", sid):
        base = f"/api/v1/services/{ref}"
        for method, path, body in (("get", "data/", None), ("get", "data/?output=csv", None), ("get", "data/?output=parquet", None),
                                   ("get", "data/summary/", None), ("post", "data/to-project/", {"project": "churn", "path": "x.csv"}),
                                   ("get", "drift/", None), ("patch", "drift/", {"share_threshold": 0.5}), ("post", "drift/", {}),
                                   ("get", f"drift/jobs/{job.pk}/", None),
                                   ("get", "ground-truth/", None), ("post", "ground-truth/", {"labels": [["a", "1"]]})):
            answer = getattr(outsider_api, method)(f"{base}/{path}", body, format="json") if body is not None else getattr(outsider_api, method)(f"{base}/{path}")
            assert answer.status_code == 404, (method, path, answer.status_code)
    # A reader reads, and is refused writes with 403 (not 404: they can see the service).
    assert reader_api.get("/api/v1/services/churnpred/drift/").status_code == 200
    assert reader_api.get(f"/api/v1/services/churnpred/drift/jobs/{job.pk}/").json()["status"] == "queued"
    assert reader_api.post("/api/v1/services/churnpred/drift/", {}, format="json").status_code == 403
    assert reader_api.post("/api/v1/services/churnpred/ground-truth/", {"labels": [["a", "1"]]}, format="json").status_code == 403
