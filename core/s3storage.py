"""The portal's file storage for a team with workers on several hosts (``MLPORTAL_STORAGE=s3``):
django-storages' S3 backend on any S3-compatible server, so every worker reads and writes the same
snapshots, outputs, models, manifests and captured data, whatever host it runs on.

What the portal relies on, and the one-folder storage (``core.filestorage.PortalFileSystemStorage``)
gives too:
- a name already taken is never overwritten (``file_overwrite`` off: a free name is picked, as on
  a folder), since outputs, snapshots and models are addressed by the name first stored;
- a file is there whole or not at all: an S3 object appears only once its upload completed, and an
  aborted multipart upload leaves no object;
- an unreachable or refusing store answers ``StorageUnavailable`` (503 in the one error shape) with
  what to check, instead of a botocore traceback; the caller then writes no row.

Credentials come from boto3's usual places (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, an
instance profile, ``~/.aws``); the bucket must exist (``manage.py check_storage`` tells, on each host).
"""
from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError
from storages.backends.s3 import S3Storage

from core.errors import PortalError

logger = logging.getLogger(__name__)


class StorageUnavailable(PortalError):
    status_code = 503
    default_code = "storage_unavailable"


def unavailable_message(storage: S3Storage, exc: Exception) -> str:
    where = f"bucket {storage.bucket_name!r}" + (f" at {storage.endpoint_url}" if storage.endpoint_url else "")
    return (f"The portal's file storage ({where}) did not accept the file: {exc}. Nothing was stored. Ask an "
            "operator to check that the S3 server is reachable from this host, that the bucket exists and that "
            "the portal's credentials may write to it (manage.py check_storage), then try again.")


class PortalS3Storage(S3Storage):
    """S3Storage that never overwrites a stored name and turns storage failures into a PortalError."""

    def get_default_settings(self):
        defaults = super().get_default_settings()
        # Addressed by name: two files must never share one (the folder storage picks a free name too).
        defaults["file_overwrite"] = False
        return defaults

    def save(self, name, content, max_length=None):
        # save() asks for a free name first (a HEAD request), then uploads: either may fail.
        try:
            return super().save(name, content, max_length=max_length)
        except (BotoCoreError, ClientError) as exc:
            logger.error("S3 storage refused %s: %s", name, exc)
            raise StorageUnavailable(unavailable_message(self, exc)) from exc

    def delete(self, name):
        try:
            return super().delete(name)
        except (BotoCoreError, ClientError) as exc:
            # Callers delete what a failed step left behind: an OSError is what they log and go on with.
            raise OSError(f"could not delete {name} from S3: {exc}") from exc
