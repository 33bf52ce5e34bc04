"""MLPORTAL_STORAGE=s3: the portal's files on an S3-compatible server (moto's standalone server here),
with the guarantees of the one-folder storage: no name overwritten, nothing half stored, a clear
answer when the store cannot be reached; captured data in the same bucket."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage, storages

from core.s3storage import PortalS3Storage, StorageUnavailable

REPO = Path(__file__).resolve().parents[2]


def test_a_file_goes_to_the_bucket_and_a_taken_name_is_never_overwritten(s3_storages, s3_server):
    first = default_storage.save("runs/r1/outputs/model.pkl", ContentFile(b"first"))
    second = default_storage.save("runs/r1/outputs/model.pkl", ContentFile(b"second"))
    assert first == "runs/r1/outputs/model.pkl" and second != first
    assert sorted(s3_server.keys(s3_storages)) == sorted([first, second])
    with default_storage.open(first, "rb") as handle:
        assert handle.read() == b"first"
    default_storage.delete(second)
    assert s3_server.keys(s3_storages) == [first]


def test_an_unreachable_store_answers_503_with_what_to_check(settings, s3_server):
    closed = s3_server.storage_options("nowhere")
    closed["endpoint_url"] = f"http://127.0.0.1:{_closed_port()}"
    storage = PortalS3Storage(**closed)
    with pytest.raises(StorageUnavailable) as caught:
        storage.save("models/m.bin", ContentFile(b"data"))
    assert caught.value.status_code == 503 and caught.value.code == "storage_unavailable"
    assert "bucket 'nowhere'" in caught.value.message and "Nothing was stored" in caught.value.message


def test_a_missing_bucket_answers_503_too(s3_server):
    storage = PortalS3Storage(**s3_server.storage_options("no-such-bucket"))
    with pytest.raises(StorageUnavailable) as caught:
        storage.save("models/m.bin", ContentFile(b"data"))
    assert "NoSuchBucket" in caught.value.message


def test_a_model_uploaded_through_the_api_is_stored_in_the_bucket_only(s3_storages, s3_server, owner_api, settings):
    content = b"a small model" * 100
    handle = io.BytesIO(content)
    handle.name = "model.bin"
    created = owner_api.post("/api/v1/models/", {"name": "model.bin", "file": handle}, format="multipart")
    assert created.status_code == 201, created.json()
    keys = s3_server.keys(s3_storages)
    assert len(keys) == 1 and keys[0].endswith("model.bin"), keys
    assert not (Path(settings.MEDIA_ROOT) / keys[0]).exists()
    download = owner_api.get(f"/api/v1/models/{created.json()['id']}/download/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == content


def test_capture_files_live_under_the_capture_prefix_and_recovery_works_there(s3_storages, s3_server, db):
    from monitoring import store

    storage = store.capture_storage()
    folder = "svc/model_version=m:1/day=2026-12-01"
    committed = storage.save(f"{store.STAGING}/.part-a.parquet.tmp", ContentFile(b"rows a"))
    orphan = storage.save(f"{store.STAGING}/.part-b.parquet.tmp", ContentFile(b"rows b"))
    assert set(s3_server.keys(s3_storages)) == {f"capture/{committed}", f"capture/{orphan}"}
    store._finish(storage, committed, f"{folder}/part-a.parquet")
    store._finish(storage, committed, f"{folder}/part-a.parquet")  # a second round changes nothing
    store.recover()  # no CaptureFile row names the orphan: it is deleted
    assert s3_server.keys(s3_storages) == [f"capture/{folder}/part-a.parquet"]
    with storage.open(f"{folder}/part-a.parquet", "rb") as handle:
        assert handle.read() == b"rows a"


def test_a_deleted_services_capture_prefix_goes_from_the_bucket_too(s3_storages, s3_server, db):
    import uuid

    from monitoring import cleanup, store

    storage = store.capture_storage()
    gone, swept = str(uuid.uuid4()), str(uuid.uuid4())  # no Service row has either id
    for service_id in (gone, swept):
        for day in ("2026-12-01", "2026-12-02"):
            storage.save(f"{service_id}/model_version=m:1/day={day}/part-{day}.parquet", ContentFile(b"rows"))
    storage.save("svc/note.txt", ContentFile(b"not a service's"))
    assert cleanup.service_capture_remove(service_id=gone) == 2  # the task sent on the delete's commit
    assert not [k for k in s3_server.keys(s3_storages) if gone in k]
    store.recover()  # a removal that never ran: the collector's round sweeps the prefix
    assert s3_server.keys(s3_storages) == ["capture/svc/note.txt"]


def test_the_storage_check_command_says_where_the_files_go(s3_storages):
    from django.core.management import call_command

    out = io.StringIO()
    call_command("check_storage", stdout=out)
    assert f"S3 bucket {s3_storages!r}" in out.getvalue() and "storage ok" in out.getvalue()


def test_s3_storage_needs_a_bucket_and_then_is_the_default(tmp_path):
    def settings_of(extra: dict) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLPORTAL_S3")}
        env.update({"MLPORTAL_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "mlportal.settings", **extra})
        code = ("import django; django.setup(); from django.conf import settings; "
                "print(settings.STORAGES['default']['BACKEND'], settings.STORAGES['capture']['OPTIONS']['location'])")
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)

    missing = settings_of({"MLPORTAL_STORAGE": "s3"})
    assert missing.returncode != 0 and "needs MLPORTAL_S3_BUCKET" in missing.stderr
    configured = settings_of({"MLPORTAL_STORAGE": "s3", "MLPORTAL_S3_BUCKET": "team", "MLPORTAL_S3_PREFIX": "/portal/"})
    assert configured.returncode == 0, configured.stderr
    assert configured.stdout.split() == ["core.s3storage.PortalS3Storage", "portal/capture"]
    wrong = settings_of({"MLPORTAL_STORAGE": "nfs"})
    assert wrong.returncode != 0 and "must be one of: filesystem, s3" in wrong.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_capture_storage_is_a_folder_of_the_data_folder_by_default(settings):
    assert Path(storages["capture"].location) == Path(settings.DATA_DIR) / "capture"


def test_a_run_output_streams_into_the_bucket_with_its_hash(s3_storages, s3_server):
    """A run's outputs reach storage as a stream from the container (core.storage.save_file, which
    runs.outputs uses)."""
    import hashlib

    from core.storage import save_file

    content = b"weights " * 5000
    saved = save_file("runs/r2/outputs/o1", io.BytesIO(content))
    stored, size, sha256 = saved.storage_name, saved.size, saved.sha256
    assert (size, sha256) == (len(content), hashlib.sha256(content).hexdigest())
    assert s3_server.keys(s3_storages) == [stored]
    with default_storage.open(stored, "rb") as handle:
        assert handle.read() == content
