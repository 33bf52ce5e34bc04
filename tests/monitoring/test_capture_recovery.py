"""Each collection round starts with recovery (finish the renames a dead collector left, delete
the files whose transaction never committed, sweep deleted services). It used to walk every file of
the capture store on every round, so a round cost more with every hour of capture kept: with a
year of hourly partitions per service, the round spent its time listing folders. Now files are
written in one staging folder and recovery lists that and the top level only; the old layout's
temporary files (beside the final ones) are looked for once per process."""
from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage

from monitoring import store
from monitoring.models import CaptureFile
from tests.monitoring.test_monitoring_data import make_capturing_service


@pytest.fixture
def listed(monkeypatch, settings, tmp_path):
    """The folders a capture storage of its own (in tmp_path: no other test's files) is asked to list."""
    settings.STORAGES = {**settings.STORAGES, "capture": {"BACKEND": "core.filestorage.PortalFileSystemStorage",
                                                          "OPTIONS": {"location": tmp_path / "capture"}}}
    seen: list[str] = []
    original = FileSystemStorage.listdir

    def listdir(self, path):
        seen.append(path)
        return original(self, path)

    monkeypatch.setattr(FileSystemStorage, "listdir", listdir)
    return seen


def test_a_rounds_recovery_lists_the_staging_folder_not_every_partition(db, workspace, owner, monkeypatch, listed):
    service = make_capturing_service(workspace, owner)
    storage = store.capture_storage()
    days = [f"{service.pk}/model_version=model.pkl:1/day=2026-11-{day:02d}" for day in range(1, 29)]
    for folder in days:
        storage.save(f"{folder}/part-{folder[-2:]}.parquet", ContentFile(b"rows"))
    committed = storage.save(f"{store.STAGING}/.part-committed.parquet.tmp", ContentFile(b"committed rows"))
    orphan = storage.save(f"{store.STAGING}/.part-orphan.parquet.tmp", ContentFile(b"never committed"))
    final = f"{days[-1]}/part-committed.parquet"
    CaptureFile.objects.create(service=service, rows=1, model_version="model.pkl:1", day="2026-11-28", path=final,
                               temp=committed)
    monkeypatch.setattr(store, "_whole_store_checked", True)  # this process already looked for the old layout

    store.recover()

    assert set(listed) <= {"", store.STAGING}, sorted(set(listed))  # no partition folder listed
    assert storage.exists(final) and not storage.exists(committed) and not storage.exists(orphan)
    with storage.open(final, "rb") as handle:
        assert handle.read() == b"committed rows"
    assert all(storage.exists(f"{folder}/part-{folder[-2:]}.parquet") for folder in days)


def test_the_old_layouts_temporary_files_are_recovered_once_per_process(db, workspace, owner, monkeypatch, listed):
    """Written before the staging folder: beside the final files, in the partition."""
    service = make_capturing_service(workspace, owner)
    storage = store.capture_storage()
    folder = f"{service.pk}/model_version=model.pkl:1/day=2026-11-30"
    committed = storage.save(f"{folder}/.part-old.parquet.tmp", ContentFile(b"old rows"))
    orphan = storage.save(f"{folder}/.part-gone.parquet.tmp", ContentFile(b"never committed"))
    CaptureFile.objects.create(service=service, rows=1, model_version="model.pkl:1", day="2026-11-30",
                               path=f"{folder}/part-old.parquet", temp=committed)
    monkeypatch.setattr(store, "_whole_store_checked", False)  # a worker just started

    store.recover()

    assert storage.exists(f"{folder}/part-old.parquet") and not storage.exists(committed)
    assert not storage.exists(orphan)
    assert store._whole_store_checked
    listed.clear()
    store.recover()  # the next round: the staging folder and the top level only
    assert set(listed) <= {"", store.STAGING}, sorted(set(listed))
