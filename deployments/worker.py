"""The worker side of services: what the ``deploy`` queue's tasks do with the containers.

``service_deploy`` (creating → healthy), ``service_apply_change`` (update, rollback, new keys,
scale) and ``service_remove`` (deleting → gone), each called by a thin task in
``deployments.tasks``. Work on a service's containers is done under a short lease (``lock_token`` /
``lock_until``), so a task delivered twice, the reconciler and an update never act on the same
containers at once. Docker calls happen outside any transaction; the row writes after them are short.
Once new replicas serve, the task takes their metrics snapshot (``deployments.replica_metrics``).
"""
from __future__ import annotations

import logging
import re
import secrets
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from deployments import replica_metrics
from deployments.models import Environment, Service, ServiceEvent, ServiceReplica, ServiceRevision
from deployments.services import event
from workspaces.instance import portal_instance  # noqa: F401 (one id for runs and services; re-exported)
from workspaces.services import activity_record

logger = logging.getLogger(__name__)

LABEL_PORTAL = "mlportal.portal"  # which portal started a container: the reconciler only touches its own
READY_TIMEOUT = 120  # seconds a new replica has to answer /ready (init() loads the model)
WAIT_SECONDS = 3  # how soon a task checks back on a service whose lease another worker holds
IMAGE_WAIT_GRACE = 600  # a deploy gives up on an image still building this long past the build time limit
LEASE_SECONDS = 660  # the deploy queue's hard time limit: no task holds a service longer
WAIT = "wait"  # returned by worker functions whose task should check back later (the lease is taken)
# Returned by service_deploy while the image builds: the task ends; the build's end enqueues it
# again (deploys_waiting_on_image), and the reconciler fails it past the build's time limit.
WAITING_FOR_IMAGE = "waiting-for-image"


def image_wait_limit() -> int:
    """Seconds after its creation a deploy still waits for its image's build."""
    return settings.MLPORTAL_BUILD_TIMEOUT + IMAGE_WAIT_GRACE


def deploys_waiting_on_image(*, image_id: str, **_) -> list[str]:
    """Enqueues the deploy of every service still ``creating`` on this image (receiver of
    ``registry.signals.image_finished``, sent once the build's end is committed). Returns their ids."""
    from deployments.tasks import deploy_service

    waiting = [str(pk) for pk in Service.objects.filter(image_id=image_id, status=Service.Status.CREATING)
               .values_list("pk", flat=True)]
    for service_id in waiting:
        deploy_service.delay(service_id)
    return waiting


def lock(service_id) -> str | None:
    """Takes the service's lease; returns its token, or None when another worker holds it."""
    now = timezone.now()
    token = uuid.uuid4()
    taken = Service.objects.filter(pk=service_id).filter(Q(lock_token__isnull=True) | Q(lock_until__lt=now)).update(
        lock_token=token, lock_until=now + timedelta(seconds=LEASE_SECONDS))
    return str(token) if taken else None


def unlock(service_id, token: str) -> None:
    Service.objects.filter(pk=service_id, lock_token=token).update(lock_token=None, lock_until=None)


def _image_ref(image) -> str:
    # The engine's id, not the tag: a tag can be moved by a rebuild; an id always means these bytes.
    return image.image_id or image.tag


def _connect_host(environment: Environment, published: str) -> str:
    """Where the workers and the proxy reach a port published on ``published`` of the engine's host."""
    if published not in ("0.0.0.0", "::"):
        return published
    if environment.engine_url:
        return urlsplit(environment.engine_url).hostname or "127.0.0.1"
    return "127.0.0.1"


def _container_env(service: Service) -> dict[str, str]:
    return {
        "MLPORTAL_SERVICE_NAME": service.name,
        "MLPORTAL_SERVICE_KEYS": ",".join([service.primary_key, service.secondary_key, service.proxy_key]),
        "MLPORTAL_WORKERS": str(max(1, round(service.cpus))),
        **_scoring_limits_env(service),
        **_capture_env(service),
    }


def _scoring_limits_env(service: Service | None = None) -> dict[str, str]:
    """The limits every scoring container enforces: the portal's settings, and the service's own
    request time limit where it has one."""
    from deployments.checks import effective_request_timeout

    timeout = effective_request_timeout(service) if service is not None else settings.MLPORTAL_SCORING_TIMEOUT_SECONDS
    return {
        # The proxy and the container refuse the same bodies.
        "MLPORTAL_MAX_BODY_BYTES": str(settings.MLPORTAL_MAX_BODY_BYTES),
        "MLPORTAL_REQUEST_TIMEOUT": f"{timeout:g}",
        "MLPORTAL_MAX_JSON_DEPTH": str(settings.MLPORTAL_MAX_JSON_DEPTH),  # the portal refuses the same nesting
    }


def _capture_env(service: Service) -> dict[str, str]:
    from monitoring.services import container_env

    return container_env(service)


def start_replicas(service: Service, *, image, numbers: list[int]) -> list[dict]:
    """Starts one container per replica number and waits until every one answers /ready; returns
    ``[{"number", "id", "host", "port"}]``. On any failure the containers it started are removed
    and the error (EngineError with the container's last log line, ValueError) is raised."""
    from compute.containers import start_service_container, wait_ready

    environment = service.environment
    base_url = environment.docker_url
    labels = {LABEL_PORTAL: portal_instance(), "mlportal.workspace": service.workspace.name,
              "mlportal.service": service.name, "mlportal.image": image.ref}
    started: list[dict] = []
    try:
        for number in numbers:
            name = f"mlportal-{service.name}-{service.pk.hex[:8]}-r{number}-{secrets.token_hex(3)}"
            info = start_service_container(
                image=_image_ref(image), service_id=str(service.pk), replica=number, name=name,
                env=_container_env(service), publish_address=environment.publish_address,
                memory_mb=service.memory_mb, cpus=service.cpus, labels=labels, base_url=base_url,
            )
            started.append({"number": number, "id": info["id"], "host": _connect_host(environment, info["host"]),
                            "port": info["port"]})
        for item in started:
            wait_ready(host=item["host"], port=item["port"], timeout_s=READY_TIMEOUT, container_id=item["id"],
                       base_url=base_url)
    except BaseException:
        stop_all([item["id"] for item in started], base_url)
        raise
    return started


def stop_all(container_ids: list[str], base_url: str | None) -> list[str]:
    """Stops and removes containers; returns the messages of those the engine did not remove."""
    from compute.containers import stop_container
    from compute.engine import EngineError

    problems = []
    for container_id in container_ids:
        try:
            stop_container(container_id, base_url=base_url)
        except EngineError as exc:
            logger.warning("could not remove container %s: %s", container_id, exc)
            problems.append(f"{container_id[:12]}: {exc}")
    return problems


def replica_rows(service: Service, started: list[dict], *, revision=None) -> list[ServiceReplica]:
    """Rows for replicas ``start_replicas`` just started: each answered /ready a moment ago, which
    is what the pages show until the reconciler checks again."""
    now = timezone.now()
    return [ServiceReplica(service=service, number=item["number"], container_id=item["id"], host=item["host"],
                           port=item["port"], revision=revision, state="running", ready=True, checked_at=now)
            for item in started]


def start_error(exc: BaseException) -> str:
    from celery.exceptions import SoftTimeLimitExceeded

    if isinstance(exc, SoftTimeLimitExceeded):
        return "the deploy task went over its time limit"
    message = str(exc) or type(exc).__name__
    # The container's last line is often the server's "stopped"; the exception in score.py says why.
    raised = [line.strip() for line in getattr(exc, "log_tail", "").splitlines() if _EXCEPTION_LINE.match(line.strip())]
    if raised and raised[-1] not in message:
        message = f"{message} ({raised[-1][:300]})"
    return message


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(:.*)?$")


def log_tail_event(service_id, exc: BaseException) -> None:
    tail = getattr(exc, "log_tail", "")
    if tail:
        event(service_id, f"Last lines of the container's log:\n{tail[-3000:]}", ServiceEvent.Level.ERROR)


def deploy_errors() -> tuple[type[BaseException], ...]:
    from celery.exceptions import SoftTimeLimitExceeded
    from compute.engine import EngineError

    return (EngineError, ValueError, SoftTimeLimitExceeded)


def service_deploy(*, service_id: str) -> str | None:
    """Starts a ``creating`` service's replicas once its image is built: creating → healthy, or
    failed with the reason (the image's build error, the engine's error, the container's last log
    line). Returns the new status, WAITING_FOR_IMAGE while the image builds (the build's end
    enqueues the deploy again), WAIT while another worker holds the service, None when there is
    nothing to do."""
    from registry.models import Image

    service = Service.objects.select_related("image", "environment", "workspace").filter(pk=service_id).first()
    if service is None or service.status != Service.Status.CREATING:
        return None
    image = service.image
    if image.status in (Image.Status.QUEUED, Image.Status.BUILDING):
        limit = image_wait_limit()
        if (timezone.now() - service.created_at).total_seconds() > limit:
            return _fail(service, f"image {image.ref} did not finish building within {limit} s")
        return WAITING_FOR_IMAGE
    if image.status == Image.Status.FAILED:
        return _fail(service, f"image {image.ref} failed to build: {image.error or 'see its build log'}")
    token = lock(service.pk)
    if token is None:
        return WAIT
    try:
        service.refresh_from_db()
        if service.status != Service.Status.CREATING:
            return None
        if service.environment.kind == Environment.Kind.CLUSTER:
            from deployments import cluster

            return cluster.service_deploy(service, image=image)
        try:
            started = start_replicas(service, image=image, numbers=list(range(1, service.replicas + 1)))
        except deploy_errors() as exc:
            log_tail_event(service.pk, exc)
            return _fail(service, f"could not start it in environment '{service.environment.name}': {start_error(exc)}")
        with transaction.atomic():
            moved = Service.objects.filter(pk=service.pk, status=Service.Status.CREATING).update(
                status=Service.Status.HEALTHY, error="")
            if not moved:  # deleted meanwhile: the delete task (waiting for the lease) removes these
                ServiceReplica.objects.bulk_create(replica_rows(service, started))
                return None
            ServiceReplica.objects.bulk_create(replica_rows(service, started))
            ServiceRevision.objects.create(service=service, number=1, image=image, image_ref=image.ref,
                                           reason=ServiceRevision.Reason.CREATE, created_by_id=service.created_by_id)
            event(service.pk, f"Deployed image {image.ref}: {len(started)} replica(s) ready.")
        replica_metrics.record_service(service.pk)
        return Service.Status.HEALTHY
    finally:
        unlock(service.pk, token)


def drain() -> None:
    """Gives every gateway process time to read the new table (and finish what it sent) before
    containers it no longer routes to stop, so a scale-down fails no request."""
    import time

    time.sleep(settings.MLPORTAL_GATEWAY_REFRESH_SECONDS * 2 + 0.2)


def _fail(service: Service, reason: str) -> str | None:
    reason = reason[:2000]
    moved = Service.objects.filter(pk=service.pk, status=Service.Status.CREATING).update(
        status=Service.Status.FAILED, error=reason)
    if not moved:
        return None
    event(service.pk, f"Failed: {reason}", ServiceEvent.Level.ERROR)
    return Service.Status.FAILED


def service_apply_change(*, service_id: str) -> str | None:
    """Carries out the pending change of an ``updating`` service (update, rollback, new keys,
    scale) and moves it back to healthy. A change that fails leaves the old replicas serving and
    says why in ``last_update_error``. Returns the new status, WAIT, or None."""
    service = Service.objects.filter(pk=service_id).first()
    if service is None or service.status != Service.Status.UPDATING:
        return None
    token = lock(service.pk)
    if token is None:
        return WAIT
    try:
        service = Service.objects.select_related("image", "environment", "workspace").get(pk=service.pk)
        if service.status != Service.Status.UPDATING:
            return None
        op = service.pending or {}
        if service.environment.kind == Environment.Kind.CLUSTER:
            from deployments import cluster

            return cluster.service_apply_change(service, op)
        if op.get("op") == "scale":
            return _scale(service, op)
        return _roll(service, op)
    finally:
        unlock(service.pk, token)


def _finish_change(service: Service, *, error: str = "", **fields) -> bool:
    """updating → healthy (guarded), or back to the status it came from when the change failed
    (``error``); clears the pending change. False when the service was deleted meanwhile."""
    return bool(Service.objects.filter(pk=service.pk, status=Service.Status.UPDATING).update(
        status=Service.Status.HEALTHY if not error else (service.pending or {}).get("from", Service.Status.HEALTHY),
        pending={}, last_update_error=error[:2000], **fields,
    ))


def _describe_change(service: Service, op: dict, image) -> str:
    if op.get("op") == "keys":
        return f"restarting the replicas with the new {op.get('key', '')} key"
    if op.get("op") == "scale":
        return f"scaling from {service.replicas} to {op.get('replicas')} replicas"
    if op.get("op") == "request_timeout":
        return "restarting the replicas with the new request time limit"
    verb = "rollback" if op.get("op") == "rollback" else "update"
    return f"the {verb} to image {image.ref}"


def _roll(service: Service, op: dict) -> str | None:
    """Starts a full new set of replicas (new image or new keys), switches the proxy's rows to
    them once all are ready, then stops the old ones."""
    from registry.models import Image

    image = service.image
    if op.get("image"):
        image = Image.objects.filter(pk=op["image"]).first() or service.image
    old = list(service.replica_set.all())
    numbers = [r.number for r in old] or list(range(1, service.replicas + 1))
    what = _describe_change(service, op, image)
    fields = {}
    if op.get("op") == "request_timeout":
        # The new replicas get the new limit; the row takes it only once they serve.
        fields["request_timeout_s"] = service.request_timeout_s = op.get("request_timeout_s")
    try:
        started = start_replicas(service, image=image, numbers=numbers)
    except deploy_errors() as exc:
        log_tail_event(service.pk, exc)
        message = f"{what[0].upper()}{what[1:]} failed: {start_error(exc)}. It goes on serving image {service.image.ref}."
        if op.get("op") == "keys":
            message += " The portal accepts the new key already; the containers' own endpoints still take the old one."
        if _finish_change(service, error=message):
            event(service.pk, message, ServiceEvent.Level.ERROR)
        return Service.Status.HEALTHY
    base_url = service.environment.docker_url
    with transaction.atomic():
        # Traffic switches here: the proxy reads these rows. The status stays updating until the
        # old replicas are gone, so "healthy" means the change is over.
        switched = Service.objects.filter(pk=service.pk, status=Service.Status.UPDATING).update(image=image, **fields)
        if switched:
            ServiceReplica.objects.filter(service=service).delete()
            ServiceReplica.objects.bulk_create(replica_rows(service, started))
            if image.pk != service.image_id:
                now = timezone.now()
                ServiceRevision.objects.filter(service=service, ended_at__isnull=True).update(ended_at=now)
                number = (service.revisions.aggregate(n=Max("number"))["n"] or 0) + 1
                ServiceRevision.objects.create(service=service, number=number, image=image, image_ref=image.ref,
                                               reason=ServiceRevision.Reason(op.get("op", "update")),
                                               created_by_id=op.get("by"))
                event(service.pk, f"{'Rolled back' if op.get('op') == 'rollback' else 'Updated'} from image "
                                  f"{service.image.ref} to {image.ref} (revision {number}); {len(started)} replica(s) ready.")
            elif op.get("op") == "request_timeout":
                limit = op.get("request_timeout_s")
                event(service.pk, f"Request time limit {'of ' + format(limit, 'g') + ' s' if limit is not None else 'back to the portal default'}: "
                                  f"{len(started)} replica(s) restarted with it.")
            else:
                event(service.pk, f"Keys changed: {len(started)} replica(s) restarted with the new {op.get('key', '')} key.")
    if not switched:  # deleted while the new replicas started: they are nobody's, remove them
        stop_all([item["id"] for item in started], base_url)
        return None
    problems = stop_all([r.container_id for r in old], base_url)
    if problems:
        event(service.pk, f"Could not remove old containers ({'; '.join(problems)}); the reconciler retries.",
              ServiceEvent.Level.WARNING)
    _finish_change(service)
    replica_metrics.record_service(service.pk)
    return Service.Status.HEALTHY


def _scale(service: Service, op: dict) -> str | None:
    target = int(op.get("replicas") or service.replicas)
    current = list(service.replica_set.all())
    base_url = service.environment.docker_url
    if target > len(current):
        taken = {r.number for r in current}
        numbers = [n for n in range(1, target + len(taken) + 1) if n not in taken][: target - len(current)]
        try:
            started = start_replicas(service, image=service.image, numbers=numbers)
        except deploy_errors() as exc:
            log_tail_event(service.pk, exc)
            message = (f"Scaling from {len(current)} to {target} replicas failed: {start_error(exc)}. "
                       f"It goes on with {len(current)}.")
            if _finish_change(service, error=message):
                event(service.pk, message, ServiceEvent.Level.ERROR)
            return Service.Status.HEALTHY
        with transaction.atomic():
            if not _finish_change(service, replicas=target):
                ServiceReplica.objects.bulk_create(replica_rows(service, started))  # for the delete task
                return None
            ServiceReplica.objects.bulk_create(replica_rows(service, started))
            event(service.pk, f"Scaled from {len(current)} to {target} replicas.")
        replica_metrics.record_service(service.pk)
        return Service.Status.HEALTHY
    going = sorted(current, key=lambda r: r.number, reverse=True)[: len(current) - target]
    with transaction.atomic():
        if not Service.objects.filter(pk=service.pk, status=Service.Status.UPDATING).update(replicas=target):
            return None
        # The rows go first, so the proxy stops sending to these replicas before they stop.
        ServiceReplica.objects.filter(pk__in=[r.pk for r in going]).delete()
        event(service.pk, f"Scaled from {len(current)} to {target} replicas.")
    drain()
    problems = stop_all([r.container_id for r in going], base_url)
    if problems:
        event(service.pk, f"Could not remove containers ({'; '.join(problems)}); the reconciler retries.",
              ServiceEvent.Level.WARNING)
    _finish_change(service)
    return Service.Status.HEALTHY


def service_remove(*, service_id: str) -> str | None:
    """Removes a ``deleting`` service's containers, then its row (deleting → deleted → gone).
    Returns "deleted", WAIT (another worker holds it), "retry" (the engine could not remove
    them: the error is kept on the service), or None."""
    from compute.engine import EngineError, EngineUnreachable
    from compute.runner import list_containers

    service = Service.objects.select_related("environment", "workspace").filter(pk=service_id).first()
    if service is None or service.status != Service.Status.DELETING:
        return None
    token = lock(service.pk)
    if token is None:
        return WAIT
    try:
        base_url = service.environment.docker_url
        ids = set(service.replica_set.values_list("container_id", flat=True))
        try:
            if service.environment.kind == Environment.Kind.CLUSTER:
                from deployments import cluster

                cluster.remove(service)  # Swarm stops its tasks; its secrets go with it
                ids = set()
            else:
                try:
                    # Both labels: another portal on this engine may have a service of the same id.
                    ids |= {c["id"] for c in list_containers("service", base_url=base_url, portal=portal_instance(),
                                                             owner_id=str(service.pk))}
                except EngineUnreachable:
                    if ids:
                        raise
                    # It never ran a replica (say, its engine was never reachable): nothing to remove.
                problems = stop_all(sorted(ids), base_url)
                if problems:
                    raise EngineError("; ".join(problems))
        except EngineError as exc:
            message = f"could not remove its containers yet: {exc}"
            Service.objects.filter(pk=service.pk).update(error=message[:2000])
            event(service.pk, f"Deleting: {message}; retrying.", ServiceEvent.Level.WARNING)
            return "retry"
        with transaction.atomic():
            if not Service.objects.filter(pk=service.pk, status=Service.Status.DELETING).update(status=Service.Status.DELETED):
                return None
            activity_record(workspace=service.workspace, actor=None, verb="service.deleted", target=service,
                            detail={"containers": len(ids)})
            served = {str(i) for i in [service.image_id, *service.revisions.values_list("image_id", flat=True)] if i}
            Service.objects.filter(pk=service.pk).delete()
            _remove_freed_images(service, sorted(served))
        return Service.Status.DELETED
    finally:
        unlock(service.pk, token)


def _remove_freed_images(service: Service, image_ids: list[str]) -> None:
    """Once the deleted service's row is gone (on commit), a task removes the images it served
    that nothing else uses, from the engine and the registry (retention decides when the
    workspace has a rule for unused images)."""
    from retention.tasks import remove_images_of_deleted_service

    if image_ids:
        workspace_id, name = str(service.workspace_id), service.name
        transaction.on_commit(lambda: remove_images_of_deleted_service.delay(workspace_id, image_ids, name))
