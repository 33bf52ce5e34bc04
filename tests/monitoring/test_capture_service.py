"""Issue 16, capture end to end: a real service container, the real worker pulling its spool,
Parquet partitions, the switch over the API, de-duplication after a failed or unacknowledged store."""
from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.deployments.conftest import SAMPLE_REQUEST, wait_for
from tests.helpers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def call(replica: dict, key: str, n: int, prefix: str) -> None:
    """n scoring calls straight to the replica on one keep-alive connection, ids prefix0…"""
    connection = http.client.HTTPConnection(replica["host"], replica["port"], timeout=30)
    body = json.dumps(SAMPLE_REQUEST)
    try:
        for i in range(n):
            connection.request("POST", "/score", body=body, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {key}", "X-Request-Id": f"{prefix}{i}"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200 and response.getheader("X-Request-Id") == f"{prefix}{i}"
    finally:
        connection.close()


def collect_with_worker(service_id) -> None:
    """The real worker runs one collection round; wait until it has finished."""
    from monitoring.models import Capture
    from monitoring.worker import collect_capture

    before = Capture.objects.filter(service_id=service_id).values_list("last_collected_at", flat=True).first()
    collect_capture.delay()
    wait_until(lambda: Capture.objects.filter(service_id=service_id).values_list("last_collected_at", flat=True).first() != before,
               timeout=60, interval=0.2, message="the worker's collection round")


def stored_ids(service_id) -> list[str]:
    from monitoring.models import CapturedRow

    return list(CapturedRow.objects.filter(service_id=service_id).values_list("request_id", flat=True))


def parquet_rows(service_id) -> list[dict]:
    import pyarrow.parquet as pq

    from monitoring.store import capture_root

    folder = capture_root() / str(service_id)
    return [row for path in sorted(folder.rglob("part-*.parquet")) for row in pq.read_table(path).to_pylist()]


def set_capture(api, ref: str, **capture):
    return api.patch(f"/api/v1/services/{ref}/", {"capture": capture}, format="json")


def test_capture_end_to_end(deploy_worker, owner_api, outsider_api, create_realtime):
    from deployments.models import Service
    from monitoring import worker
    from monitoring.store import capture_root

    created = create_realtime(owner_api, "capturesvc")
    assert created.status_code in (201, 202), created.content
    service = wait_for(owner_api, "capturesvc", ("healthy", "failed"))
    assert service["status"] == "healthy", service
    assert service["capture"]["mode"] == "off"
    replica = service["containers"][0]
    key = owner_api.get("/api/v1/services/capturesvc/keys/").json()["primary"]
    sid = service["id"]

    # An outsider sees neither the switch nor the data.
    assert set_capture(outsider_api, "capturesvc", mode="both").status_code == 404
    assert outsider_api.get("/api/v1/services/capturesvc/data/").status_code == 404
    assert outsider_api.get(f"/api/v1/services/{sid}/data/?output=csv").status_code == 404
    # Bad values: 400 naming the field, nothing changed.
    for bad, field in (({"percent": 150}, "capture.percent"), ({"percent": -1}, "capture.percent"),
                       ({"mode": "all"}, "capture.mode")):
        answer = set_capture(owner_api, "capturesvc", **bad)
        assert answer.status_code == 400 and field in answer.json()["error"]["fields"], answer.content
    assert owner_api.get("/api/v1/services/capturesvc/").json()["capture"]["mode"] == "off"
    # The replica refuses anyone without the internal key, even with the service key.
    connection = http.client.HTTPConnection(replica["host"], replica["port"], timeout=10)
    connection.request("POST", "/_mlportal/capture", body="{}", headers={"Authorization": f"Bearer {key}"})
    assert connection.getresponse().status == 404
    connection.close()

    # Off (the default): nothing is stored.
    call(replica, key, 50, "off-")
    assert worker.collect_all() == 0
    assert stored_ids(sid) == [] and parquet_rows(sid) == []
    service_row = Service.objects.get(pk=sid)
    assert worker.pull(service_row.replica_set.get(), worker.internal_key(service_row), {})["pending"] == 0

    # 100 %, switched on a running replica (no redeploy): every one of 2,000 calls is stored once.
    assert set_capture(owner_api, "capturesvc", mode="both", percent=100).status_code == 200
    collect_with_worker(sid)  # the pull carries the new switch to the replica
    time.sleep(1.5)  # the replica's workers re-read it within 1 s
    call(replica, key, 2000, "full-")
    collect_with_worker(sid)
    assert sorted(stored_ids(sid)) == sorted(f"full-{i}" for i in range(2000))
    rows = parquet_rows(sid)
    assert len(rows) == 2000 and {r["request_id"] for r in rows} == {f"full-{i}" for i in range(2000)}
    row = rows[0]
    assert row["in_age"] == SAMPLE_REQUEST["input_df"][0]["age"] and json.loads(row["prediction"]) == "0"
    assert row["latency_ms"] > 0 and row["model_version"].startswith("model.pkl:")
    assert row["revision"] == 1  # the revision of the replica the rows were pulled from
    files = sorted(p.relative_to(capture_root()).as_posix() for p in (capture_root() / sid).rglob("*.parquet"))
    assert files and all(f.startswith(f"{sid}/model_version=") and "/day=" in f for f in files), files
    data = owner_api.get("/api/v1/services/capturesvc/data/?limit=5").json()
    assert data["count"] == 5
    csv_answer = owner_api.get("/api/v1/services/capturesvc/data/?output=csv")
    assert csv_answer.status_code == 200 and csv_answer.content.decode().count("\n") == 2001
    reversed_range = owner_api.get("/api/v1/services/capturesvc/data/?since=2026-12-02&until=2026-12-01")
    assert reversed_range.status_code == 400 and "until" in reversed_range.json()["error"]["fields"]

    # 10 %: Binomial(2000, 0.1) has mean 200 and sd 13.4; [133, 267] is ±5 sd (false failure < 1e-6).
    set_capture(owner_api, "capturesvc", mode="inputs", percent=10)
    collect_with_worker(sid)
    time.sleep(1.5)
    call(replica, key, 2000, "tenth-")
    collect_with_worker(sid)
    tenth = [r for r in parquet_rows(sid) if r["request_id"].startswith("tenth-")]
    assert 133 <= len(tenth) <= 267, len(tenth)
    assert all(r.get("prediction") is None for r in tenth)

    # A store that fails (the worker dies after writing, before recording) stores nothing and
    # acknowledges nothing; the next round stores those rows exactly once.
    set_capture(owner_api, "capturesvc", mode="both", percent=100)
    collect_with_worker(sid)
    time.sleep(1.5)
    call(replica, key, 30, "crash-")
    service_row = Service.objects.get(pk=sid)
    replica_row = service_row.replica_set.get()

    def die():
        raise RuntimeError("worker killed between pull and store")

    original = worker.store
    with pytest.raises(RuntimeError):
        worker.store = lambda s, rows, **kw: original(s, rows, after_write=die)
        try:
            worker.collect_replica(service_row, replica_row, {"mode": "both", "percent": 100.0})
        finally:
            worker.store = original
    assert not any(r.startswith("crash-") for r in stored_ids(sid))
    assert not list(capture_root().rglob("*.tmp"))  # the staging folder's included
    # Stored but never acknowledged (died after the commit): the next pull answers them again.
    answer = worker.pull(replica_row, worker.internal_key(service_row), {"limit": 1000})
    assert {r["request_id"] for r in answer["rows"]} == {f"crash-{i}" for i in range(30)}
    assert worker.store(service_row, answer["rows"][:10]) == 10
    collect_with_worker(sid)
    ids = stored_ids(sid)
    assert len(ids) == len(set(ids))
    assert sorted(i for i in ids if i.startswith("crash-")) == sorted(f"crash-{i}" for i in range(30))
    assert len([r for r in parquet_rows(sid) if r["request_id"].startswith("crash-")]) == 30
    assert worker.pull(replica_row, worker.internal_key(service_row), {"limit": 10})["rows"] == []
