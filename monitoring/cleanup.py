"""What goes when a service goes: its captured Parquet files (issue 16), after its row.

``monitoring/receivers.py`` sends the removal task on the commit that deleted the row;
``sweep_deleted_services`` (run by every collection round's ``recover()``) removes what that
missed: a task lost with its worker, a file a round renamed just after the removal, a service
that went with its workspace while no worker was up.
"""
from __future__ import annotations

import logging
import shutil
import uuid

from monitoring.store import capture_storage, is_folder, walk

log = logging.getLogger(__name__)


def service_capture_remove(*, service_id: str) -> int:
    """Deletes every capture file of a service whose row is gone (and, on a folder, its emptied
    folders); returns the files deleted. A service that still exists keeps its files: the task is
    sent after the delete's commit, so that only happens for a deletion rolled back afterwards."""
    from deployments.models import Service

    if Service.objects.filter(pk=service_id).exists():
        return 0
    storage = capture_storage()
    deleted = 0
    for name in list(walk(storage, str(service_id))):
        storage.delete(name)
        deleted += 1
    if is_folder(storage):
        # What is left are empty folders (or a file a round renamed meanwhile, as much an orphan).
        shutil.rmtree(storage.path(str(service_id)), ignore_errors=True)
    return deleted


def _is_service_folder(name: str) -> bool:
    """A top-level folder the worker makes: a service id as str(uuid) spells it."""
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


def sweep_deleted_services(storage) -> int:
    """Removes the folders of services whose row is gone that the task sent on their delete
    missed: the worker died before it ran, a round renamed a file after it, or the service went
    with its workspace while no worker was up. Returns the folders removed."""
    from deployments.models import Service

    try:
        folders, _ = storage.listdir("")
    except FileNotFoundError:
        return 0
    ids = {name for name in folders if _is_service_folder(name)}
    if not ids:
        return 0
    alive = {str(pk) for pk in Service.objects.filter(pk__in=ids).values_list("pk", flat=True)}
    for service_id in sorted(ids - alive):
        log.info("capture: removing the files of deleted service %s", service_id)
        service_capture_remove(service_id=service_id)
    return len(ids - alive)
