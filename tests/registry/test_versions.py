"""Versions per name are concurrency-safe: writers racing for the next number all get one."""
import threading

import pytest
from django.db import IntegrityError, connection

from registry import services
from registry.models import Model
from tests.registry.conftest import upload


def test_concurrent_registrations_get_distinct_consecutive_versions(transactional_db, owner, workspace):
    errors, barrier = [], threading.Barrier(6)

    def register(i: int) -> None:
        try:
            barrier.wait()
            services.model_register_upload(workspace=workspace, name="model.pkl", fileobj=upload("model.pkl", f"{i}".encode()),
                                           filename="model.pkl", user=owner)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=register, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(Model.objects.values_list("version", flat=True)) == [1, 2, 3, 4, 5, 6]


@pytest.mark.django_db
def test_the_database_refuses_a_duplicate_version(owner, workspace):
    model = services.model_register_upload(workspace=workspace, name="m", fileobj=upload("m", b"x"), filename="m", user=owner)
    with pytest.raises(IntegrityError):
        Model.objects.create(workspace=workspace, name="m", version=model.version, file_name="m", file="f", size=1, sha256="0" * 64)
