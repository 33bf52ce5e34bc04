"""Racing writers against the real database (20 threads, transactional_db): run numbers, model
versions and the automatic `local` environment stay correct and never answer 500."""
from __future__ import annotations

import io
import threading

import pytest
from django.db import connection

from runs import services as run_services
from runs.models import Run

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 20


def race(count: int, work) -> list:
    """Runs ``work(i)`` in ``count`` threads released together; returns their results in order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - reported by the assertions
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


@pytest.fixture
def project(owner, workspace):
    project = run_services.project_create(workspace=workspace, name="scratch", user=owner)
    run_services.project_file_put(project=project, path="train.py", content=b"print(1)\n", user=owner)
    return project


def test_twenty_concurrent_submits_into_one_project_get_numbers_1_to_20(owner, project, api_for):
    clients = [api_for(owner) for _ in range(THREADS)]
    answers = race(THREADS, lambda i: clients[i].post("/api/v1/runs/", {"project": "scratch", "script": "train.py"},
                                                     format="json"))
    codes = [getattr(a, "status_code", a) for a in answers]
    assert codes == [201] * THREADS, codes
    numbers = sorted(Run.objects.filter(project=project).values_list("number", flat=True))
    assert numbers == list(range(1, THREADS + 1))


def test_twenty_concurrent_model_registrations_get_versions_1_to_20(owner, workspace, api_for):
    from registry.models import Model

    clients = [api_for(owner) for _ in range(THREADS)]

    def register(i):
        return clients[i].post("/api/v1/models/", {"name": "model.pkl", "file": io.BytesIO(f"model {i}".encode())},
                               format="multipart")

    answers = race(THREADS, register)
    codes = [getattr(a, "status_code", a) for a in answers]
    assert codes == [201] * THREADS, codes
    versions = sorted(Model.objects.filter(workspace=workspace, name="model.pkl").values_list("version", flat=True))
    assert versions == list(range(1, THREADS + 1))
