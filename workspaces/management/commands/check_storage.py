"""``manage.py check_storage``: writes, reads back and deletes a probe file in the portal's file
storage, and says where that storage is. Run it on each new worker host (with the same environment
as its worker): a worker whose storage is not the one the others share must not take work."""
from __future__ import annotations

import uuid

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management.base import BaseCommand, CommandError

from core.errors import PortalError


def describe(storage) -> str:
    bucket = getattr(storage, "bucket_name", None)
    if bucket:
        endpoint = getattr(storage, "endpoint_url", None) or "AWS"
        return f"S3 bucket {bucket!r} at {endpoint}" + (f", prefix {storage.location!r}" if storage.location else "")
    return f"the folder {storage.location}"


class Command(BaseCommand):
    help = "Check that this host can write, read and delete files in the portal's file storage."

    def handle(self, *args, **options):
        where = describe(default_storage)
        name = f"probes/{uuid.uuid4().hex}.txt"
        payload = f"mlportal storage probe {name}".encode()
        try:
            stored = default_storage.save(name, ContentFile(payload))
            try:
                with default_storage.open(stored, "rb") as handle:
                    read = handle.read()
            finally:
                default_storage.delete(stored)
        except (PortalError, OSError) as exc:
            raise CommandError(f"storage check failed for {where}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - botocore and friends: say what failed, in one line
            raise CommandError(f"storage check failed for {where}: {type(exc).__name__}: {exc}") from exc
        if read != payload:
            raise CommandError(f"storage check failed for {where}: the probe read back differs from what was written")
        self.stdout.write(f"storage ok: {where} (wrote, read back and deleted {stored})")
