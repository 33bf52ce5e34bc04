"""The worker side of images: what the ``builds`` queue's task (``registry.tasks.build_image``) does.

Claims a queued image (queued → building, guarded), builds the environment image and the service
image on the Docker engine, stores the build log as it goes (``BuildLog``) and beats a heartbeat so
a silent step is not taken for a dead worker; then building → succeeded / failed, guarded.
``engine_image_remove`` is what ``registry.tasks.remove_engine_image`` does once a deleted image's
row is gone (``registry.services.image_delete`` enqueues it on commit); ``image_remove`` is
retention's removal of an unused image, engine first, then its row, with no lock held across the
engine call.
"""
from __future__ import annotations

import threading
import time
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.logs import next_seq
from core.storage import open_file, read_file
from registry import inference
from registry.models import Image, ImageLogChunk, Manifest
from registry.services import manifest_file


STALE_BUILD_SECONDS = 180  # a building image whose worker gave no sign of life for this long is taken over
HEARTBEAT_SECONDS = 30
LOG_FLUSH_SECONDS = 0.5
LOG_FLUSH_CHARS = 16 * 1024


class BuildLog:
    """Collects build log lines and stores them as chunks, at most every LOG_FLUSH_SECONDS, so the
    page can tail the log while it builds. Each flush also beats the image's heartbeat. Past
    MLPORTAL_LOG_MAX_BYTES the rest is dropped, with a note saying so."""

    def __init__(self, image: Image) -> None:
        self.image_id = image.pk
        self.size = image.log_size  # characters stored so far (the cap counts them)
        self.seq = next_seq(ImageLogChunk.objects.filter(image_id=image.pk)) - 1
        self.buffer: list[str] = []
        self.buffered = 0
        self.last_flush = 0.0  # the first line goes out at once: the page shows the build started
        self.limit = settings.MLPORTAL_LOG_MAX_BYTES
        self.truncated = False

    def __call__(self, line: str) -> None:
        if self.truncated:
            return
        text = f"{line}\n"
        if self.size + self.buffered + len(text) > self.limit:
            text = f"[log truncated at {self.limit} characters; the build goes on]\n"
            self.truncated = True
        self.buffer.append(text)
        self.buffered += len(text)
        if self.buffered >= LOG_FLUSH_CHARS or time.monotonic() - self.last_flush >= LOG_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        now = timezone.now()
        if not self.buffer:
            Image.objects.filter(pk=self.image_id).update(heartbeat_at=now)
            return
        text = "".join(self.buffer)
        self.buffer, self.buffered = [], 0
        self.seq += 1
        ImageLogChunk.objects.create(image_id=self.image_id, seq=self.seq, text=text)
        self.size += len(text)
        Image.objects.filter(pk=self.image_id).update(log_size=self.size, heartbeat_at=now)


def image_build_requirements(manifest: Manifest, log=None) -> list[str]:
    """Returns the manifest's requirements plus what the image needs and they do not list (see
    ``registry.inference.infer_requirements``). ``log(line)`` hears what was added and why."""
    from mlportal_runtime.schema import load_schema

    schema = load_schema(manifest_file(manifest, Manifest.SCHEMA))
    complete = Manifest.REQUIREMENTS in manifest.files
    models = [] if complete else [(m.file_name, partial(open_file, m.file))
                                  for m in manifest.model_versions.all()]
    reqs, notes = inference.infer_requirements(
        listed=list(manifest.requirements), needs_pandas=schema.needs_pandas, needs_numpy=schema.needs_numpy,
        listed_is_complete=complete, models=models,
        score=b"" if complete else manifest_file(manifest, Manifest.SCORE),
        local_modules={p[:-3] for p in manifest.files if p.endswith(".py")},
    )
    if log is not None:
        for line in notes:
            log(line)
    return reqs


def image_app_files(manifest: Manifest) -> dict[str, bytes]:
    """Returns the files of the image's app dir: the manifest's files and each model under its
    registered file name (so score.py opens ``model.pkl`` as in the lab)."""
    files = {path: manifest_file(manifest, path) for path in manifest.files}
    for model in manifest.model_versions.all():
        files[model.file_name] = read_file(model.file)
    return files


def _claim_build(image_id: str) -> Image | None:
    """Moves the image queued → building and returns it; takes over a build whose worker went
    silent. None when another worker has it or it is finished."""
    now = timezone.now()
    claimed = Image.objects.filter(pk=image_id, status=Image.Status.QUEUED).update(
        status=Image.Status.BUILDING, started_at=now, heartbeat_at=now,
    )
    if not claimed:
        stale = now - timezone.timedelta(seconds=STALE_BUILD_SECONDS)
        claimed = Image.objects.filter(pk=image_id, status=Image.Status.BUILDING, heartbeat_at__lt=stale).update(
            started_at=now, heartbeat_at=now,
        )
        if not claimed:
            return None
        ImageLogChunk.objects.filter(image_id=image_id).delete()
        Image.objects.filter(pk=image_id).update(log_size=0)
    return Image.objects.select_related("manifest", "workspace").get(pk=image_id)


class Heartbeat:
    """Beats the image's heartbeat from a background thread while the build runs, so a silent
    step (a long download, a compile) is not taken for a dead worker."""

    def __init__(self, image_id, interval: float = HEARTBEAT_SECONDS) -> None:
        self.image_id = image_id
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{image_id}", daemon=True)

    def _beat(self) -> None:
        from django.db import connection

        try:
            while not self.stop.wait(self.interval):
                Image.objects.filter(pk=self.image_id, status=Image.Status.BUILDING).update(heartbeat_at=timezone.now())
        finally:
            connection.close()  # this thread's own connection

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def image_is_building(image_id: str) -> bool:
    return Image.objects.filter(pk=image_id, status=Image.Status.BUILDING).exists()


def image_finish(image: Image, **fields) -> bool:
    """building → succeeded / failed, guarded; False when someone else finished it. Once the row
    is committed, ``registry.signals.image_finished`` tells the deploys waiting on this image
    (they do not poll it)."""
    from registry.signals import image_finished

    fields.setdefault("finished_at", timezone.now())
    if not Image.objects.filter(pk=image.pk, status=Image.Status.BUILDING).update(**fields):
        return False
    image_id, status = str(image.pk), fields.get("status")
    transaction.on_commit(lambda: image_finished.send(sender=Image, image_id=image_id, status=status))
    return True


def image_build(*, image_id: str) -> str | None:
    """Builds a queued image: the environment image (requirements from the wheel cache), then the
    service image with the manifest's files and models. Returns the final status, or None when the
    image was not this worker's to build (already claimed, finished or deleted).

    A failed build stores the reason, the failing step and the log tail; it never raises for a
    build or engine failure (the status tells)."""
    image = _claim_build(image_id)
    if image is None:
        return None
    with Heartbeat(image.pk):
        return _build(image)


def _build(image: Image) -> str:
    from celery.exceptions import SoftTimeLimitExceeded
    from compute.engine import BuildError, EngineError
    from compute.images import build_service_image
    from retention.envimages import env_image_prepare

    log = BuildLog(image)
    started = time.monotonic()
    manifest = image.manifest
    try:
        log(f"building {image.tag} from manifest {manifest.ref} (hash {manifest.content_hash[:12]})")
        requirements = image_build_requirements(manifest, log=log)
        log(f"requirements: {', '.join(requirements) or '(none)'}")
        env_image = env_image_prepare(requirements=requirements, log=log)
        built = build_service_image(
            tag=image.tag, env_image=env_image, app_files=image_app_files(manifest), labels=image.labels, log=log,
            timeout_s=settings.MLPORTAL_BUILD_TIMEOUT, base_url=settings.MLPORTAL_DOCKER_URL,
        )
    except BuildError as exc:
        log(f"build failed: {exc}")
        log.flush()
        image_finish(image, status=Image.Status.FAILED, error=str(exc)[:2000], error_step=(exc.step or "")[:255],
                error_log_tail=exc.log_tail[-8000:], build_seconds=time.monotonic() - started)
        return Image.Status.FAILED
    except (EngineError, ValueError) as exc:
        log(f"build failed: {exc}")
        log.flush()
        image_finish(image, status=Image.Status.FAILED, error=str(exc)[:2000], build_seconds=time.monotonic() - started)
        return Image.Status.FAILED
    except SoftTimeLimitExceeded:
        message = f"the build went over its time limit ({settings.MLPORTAL_BUILD_TIMEOUT} s) and was stopped"
        log(message)
        log.flush()
        image_finish(image, status=Image.Status.FAILED, error=message, build_seconds=time.monotonic() - started)
        return Image.Status.FAILED
    except BaseException as exc:
        # An unexpected error must not leave the image "building" forever.
        log(f"build failed: internal error {type(exc).__name__}: {exc}")
        log.flush()
        image_finish(image, status=Image.Status.FAILED, error=f"internal error: {type(exc).__name__}: {exc}"[:2000],
                build_seconds=time.monotonic() - started)
        raise
    seconds = time.monotonic() - started
    log(f"built {image.tag} ({built['id'][:19]}, {built['size']} bytes) in {seconds:.1f} s")
    log.flush()
    image_finish(image, status=Image.Status.SUCCEEDED, image_id=built["id"], size=built["size"], build_seconds=seconds,
                 env_image=env_image)
    return Image.Status.SUCCEEDED


def engine_image_remove(*, tag: str, engine_id: str) -> str:
    """Removes a deleted image (its row is gone) from the Docker engine: the tag when it still
    names these bytes (a newer build may have taken it: then only the old bytes go, if nothing
    else holds them). Returns "removed", "gone" (the engine had none) or "refused" (a container
    the portal does not manage still runs it: left, and logged). Raises EngineUnreachable, which
    the task retries."""
    import logging

    from compute.engine import EngineError, EngineUnreachable

    try:
        return "removed" if remove_own_image(tag=tag, engine_id=engine_id) else "gone"
    except EngineUnreachable:
        raise
    except EngineError as exc:
        logging.getLogger(__name__).warning("the engine kept deleted image %s (%s): %s", tag, engine_id, exc)
        return "refused"


def remove_own_image(*, tag: str, engine_id: str) -> bool:
    """Removes the image built as ``tag`` with id ``engine_id``: by the tag while it still names
    these bytes, else by the id alone. The tag may have moved to other bytes since (a rebuild, or
    another portal on a shared engine that built the same name): removing by the tag would then
    take someone else's image. Returns False when the engine had neither."""
    from compute.engine import image_id as engine_image_id
    from compute.images import remove_image

    base_url = settings.MLPORTAL_DOCKER_URL
    ref = tag if engine_image_id(tag, base_url=base_url) == engine_id else engine_id
    return remove_image(ref, base_url=base_url)


def image_remove(*, image_id, actor=None, detail: dict | None = None) -> Image | None:
    """Removes an image from the Docker engine, then its row, holding no lock across the engine
    call: a short transaction checks it may go and marks it ``deleting`` (so no service starts
    from it), the engine removes it outside any transaction, a second one deletes the row. Raises
    Conflict (building, used by a service), the engine's EngineError (the image is back to its
    status). Returns the deleted image, or None when it was gone already."""
    from compute.engine import EngineError
    from core.errors import Conflict
    from registry import selectors
    from registry.services import image_check_removable
    from workspaces.services import activity_record

    with transaction.atomic():
        image = Image.objects.select_for_update().select_related("workspace").filter(pk=image_id).first()
        if image is None:
            return None
        image_check_removable(image)
        previous = Image.Status.SUCCEEDED if image.status == Image.Status.DELETING else image.status
        if image.image_id:
            Image.objects.filter(pk=image.pk).update(status=Image.Status.DELETING)
    if image.image_id:
        try:
            remove_own_image(tag=image.tag, engine_id=image.image_id)
        except EngineError:
            Image.objects.filter(pk=image.pk, status=Image.Status.DELETING).update(status=previous)
            raise
    with transaction.atomic():
        if selectors.services_using_images([image.pk], include_deleted=True):  # made in the moment it was checked
            Image.objects.filter(pk=image.pk).update(status=Image.Status.FAILED,
                                                     error="removed from the Docker engine while a service was created from it")
            raise Conflict(f"Image {image.ref} was removed from the engine while a service was created from it: "
                           "delete that service, then the image.", code="in_use")
        activity_record(workspace=image.workspace, actor=actor, verb="image.deleted", target=image,
                        detail={"tag": image.tag, **(detail or {})})
        image.delete()
    return image
