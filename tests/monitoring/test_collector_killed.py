"""Issue 16: "a worker killed between pull and store loses and duplicates nothing", with a real kill.

A real scoring server (subprocess, its spool over HTTP with the internal key) stands for the
replica; the collector runs in processes of its own on the test database and is SIGKILLed, so no
``except`` or ``finally`` of it runs: once after it wrote a Parquet file under its temporary name,
before the transaction that records it; once after that commit, before the rename. The next
round (``recover()``, then the pull the killed ones never acknowledged) ends with every request
stored exactly once and no temporary file left.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, worker_env
from tests.monitoring.test_monitoring_data import make_capturing_service
from tests.runtime.conftest import SERVICE_KEYS, sample_request, start_server, trained_churn  # noqa: F401 (session fixtures)

pytestmark = [pytest.mark.integration]

KILLED_AFTER_WRITE = """
import os, signal
from monitoring import worker
original = worker.store
worker.store = lambda service, rows, **kw: original(service, rows, after_write=lambda: os.kill(os.getpid(), signal.SIGKILL))
worker.collect_all()
"""
KILLED_AFTER_COMMIT = """
import os, signal
from monitoring import store, worker
store._finish = lambda storage, temp, final: os.kill(os.getpid(), signal.SIGKILL)
worker.collect_all()
"""


def collector(script: str) -> subprocess.CompletedProcess:
    from django.db import connection

    code = "import django; django.setup()\n" + script
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=worker_env(dict(connection.settings_dict)),
                          capture_output=True, text=True, timeout=120)


def test_a_collector_killed_between_pull_and_store_loses_and_duplicates_nothing(
        transactional_db, owner, workspace, start_server, trained_churn, sample_request):  # noqa: F811
    import pyarrow.parquet as pq

    from deployments.models import ServiceReplica
    from monitoring import worker
    from monitoring.models import CapturedRow, CaptureFile
    from monitoring.store import STAGING, capture_root
    from monitoring.services import internal_key

    service = make_capturing_service(workspace, owner)
    server = start_server(trained_churn["app"], workers=2, MLPORTAL_SERVICE_NAME="churnpred", MLPORTAL_SERVICE_KEYS=SERVICE_KEYS,
                          MLPORTAL_INTERNAL_KEY=internal_key(service), MLPORTAL_CAPTURE_MODE="both")
    ServiceReplica.objects.create(service=service, number=1, container_id="local-server", host="127.0.0.1", port=server.port)
    key = {"Authorization": "Bearer " + SERVICE_KEYS.split(",")[0]}
    for i in range(30):
        assert server.request("POST", "/score", json.dumps(sample_request), dict(key, **{"X-Request-Id": f"k{i}"}))[0] == 200
    folder = capture_root() / str(service.pk)
    staging = capture_root() / STAGING  # where every file is written before its rename

    died = collector(KILLED_AFTER_WRITE)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    assert len(list(staging.glob(".part-*.parquet.tmp"))) == 1 and not list(folder.rglob("part-*.parquet"))
    assert not CapturedRow.objects.filter(service=service).exists() and not CaptureFile.objects.exists()

    # The next collector finds the orphan file (deletes it), stores the unacknowledged rows, dies before the rename.
    died = collector(KILLED_AFTER_COMMIT)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    (record,) = CaptureFile.objects.filter(service=service)
    assert CapturedRow.objects.filter(service=service).count() == 30
    assert [p.name for p in staging.glob(".part-*.parquet.tmp")] == [record.temp.rsplit("/", 1)[-1]]

    # A clean round: the rename is finished, the rows answered again are skipped, then acknowledged.
    assert worker.collect_all() == 0
    assert not list(staging.glob("*.tmp")) and not list(folder.rglob("*.tmp"))
    rows = [r for path in folder.rglob("part-*.parquet") for r in pq.read_table(path).to_pylist()]
    assert sorted(r["request_id"] for r in rows) == sorted(f"k{i}" for i in range(30))
    assert sorted(CapturedRow.objects.filter(service=service).values_list("request_id", flat=True)) == sorted(f"k{i}" for i in range(30))
    answer = worker.pull(service.replica_set.get(), internal_key(service), {"limit": 100})
    assert answer["rows"] == [] and answer["pending"] == 0
