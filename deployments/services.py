"""Every change to environments and services goes through these functions.

Two halves: what a request does (check, record, enqueue: ``environment_*``, ``service_create*``,
``service_update`` …) and what the ``deploy`` worker does with the containers (``service_deploy``,
``service_apply_change``, ``service_remove``, ``services_reconcile``), each called by a thin task in
``deployments.tasks``.

A service's status moves by guarded updates (``UPDATE … WHERE status = <expected>``); work on its
containers is done under a short lease (``lock_token`` / ``lock_until``), so a task delivered twice,
the reconciler and an update never act on the same containers at once.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import uuid
from collections import defaultdict
from contextlib import contextmanager
from datetime import timedelta
from typing import IO, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from deployments import hosts
from deployments.models import ActiveEnvironment, Environment, Service, ServiceEvent, ServiceReplica, ServiceRevision
from workspaces.errors import Conflict, PortalError
from workspaces.models import Role, Workspace
from workspaces.services import activity_record, check_name, require_role
from workspaces.instance import portal_instance

logger = logging.getLogger(__name__)

CLUSTER_NOT_AVAILABLE = "cluster (Kubernetes) environments are not available yet"
LABEL_PORTAL = "mlportal.portal"  # which portal started a container: the reconciler only touches its own
READY_TIMEOUT = 120  # seconds a new replica has to answer /ready (init() loads the model)
WAIT_SECONDS = 3  # how often a deploy checks back on an image that is still building
IMAGE_WAIT_GRACE = 600  # a deploy gives up on an image still building this long past the build time limit
LEASE_SECONDS = 660  # the deploy queue's hard time limit: no task holds a service longer
STALE_SECONDS = 120  # a creating/updating/deleting service untouched this long has lost its task
MIN_MEMORY_MB = 64
WAIT = "wait"  # returned by worker functions whose task should check back later


# --- checks on what users send ----------------------------------------------------------------

def check_engine_url(value: Any) -> str:
    """Returns a normalised engine URL: empty (the workers' own engine), ``tcp://host:port`` or
    ``ssh://[user@]host[:port]``; raises PortalError saying what to change."""
    value = (value or "").strip() if isinstance(value, str) else value
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or len(value) > 255 or any(ord(c) < 33 for c in value):
        raise _field_error("engine_url", "The engine URL must be one line of at most 255 characters without spaces.")
    parts = urlsplit(value)
    if parts.scheme not in ("tcp", "ssh"):
        raise _field_error("engine_url", f"Engine URL {value[:80]!r} is not supported: use tcp://host:port or "
                                         "ssh://user@host, or leave it empty for the workers' own Docker engine.")
    try:
        port = parts.port
    except ValueError:
        raise _field_error("engine_url", f"Engine URL {value[:80]!r} has an invalid port: use a number from 1 to 65535.") from None
    if not parts.hostname:
        raise _field_error("engine_url", f"Engine URL {value[:80]!r} names no host: write it like tcp://10.0.0.5:2375.")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _field_error("engine_url", f"Engine URL {value[:80]!r} must not hold a path, query or fragment.")
    if parts.scheme == "tcp":
        if parts.username or parts.password:
            raise _field_error("engine_url", "A tcp:// engine URL takes no user name or password.")
        if port is None:
            raise _field_error("engine_url", f"Engine URL {value[:80]!r} needs a port, like tcp://10.0.0.5:2375.")
    elif parts.password:
        raise _field_error("engine_url", "Do not put a password in an ssh:// URL: use an SSH key of the worker's user.")
    value = value.rstrip("/")
    try:
        hosts.check_engine_url(value)
    except hosts.NotAllowed as exc:
        raise PortalError(str(exc), code="not_allowed", fields={"engine_url": str(exc)}) from None
    return value


def check_publish_address(value: Any) -> str:
    value = (value or "").strip() if isinstance(value, str) else value
    if value in (None, ""):
        return "127.0.0.1"
    try:
        address = str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise _field_error("publish_address", f"Publish address {str(value)[:60]!r} is not an IP address: use "
                                              "127.0.0.1 (this host only) or an address of the engine's host.") from None
    try:
        hosts.check_publish_address(address)
    except hosts.NotAllowed as exc:
        raise PortalError(str(exc), code="not_allowed", fields={"publish_address": str(exc)}) from None
    return address


def check_labels(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise _field_error("labels", 'Labels must be a JSON object of text values, like {"stage": "production"}.')
    if len(value) > 50:
        raise _field_error("labels", "At most 50 labels.")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}", key):
            raise _field_error("labels", f"Label name {str(key)[:40]!r} is not allowed: use up to 63 letters, digits, '.', '_', '-' or '/'.")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise _field_error("labels", f"Label {key!r} must have a text or number value.")
        text = str(item)
        if len(text) > 255 or any(ord(c) < 32 for c in text):
            raise _field_error("labels", f"Label {key!r} must be one line of at most 255 characters.")
        out[key] = text
    return out


def check_replicas(value: Any) -> int:
    cap = settings.MLPORTAL_MAX_REPLICAS
    number = _whole_number(value, "replicas", f"Replicas must be a whole number from 1 to {cap}.")
    if number < 1:
        raise _field_error("replicas", f"Replicas must be at least 1 (got {number}); delete the service to stop it.")
    if number > cap:
        raise _field_error("replicas", f"Replicas must be at most {cap} (MLPORTAL_MAX_REPLICAS); got {number}.")
    return number


def check_cpus(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _field_error("cpus", "CPUs must be a number, like 0.5 or 2.") from None
    maximum = settings.MLPORTAL_SERVICE_MAX_CPUS
    if number != number or number > maximum:
        raise _field_error("cpus", f"CPUs {number:g} is over the portal's maximum of {maximum:g} "
                                   f"(MLPORTAL_SERVICE_MAX_CPUS): ask for {maximum:g} or less.")
    if number < 0.1:
        raise _field_error("cpus", f"CPUs must be from 0.1 to {maximum:g}; got {number:g}.")
    return round(number, 2)


def check_memory(value: Any) -> int:
    number = _whole_number(value, "memory_mb", "Memory must be a whole number of MB, like 1024.")
    maximum = settings.MLPORTAL_SERVICE_MAX_MEMORY_MB
    if number > maximum:
        raise _field_error("memory_mb", f"Memory {number} MB is over the portal's maximum of {maximum} MB "
                                        "(MLPORTAL_SERVICE_MAX_MEMORY_MB): ask for less.")
    if number < MIN_MEMORY_MB:
        raise _field_error("memory_mb", f"Memory must be from {MIN_MEMORY_MB} to {maximum} MB; got {number}.")
    return number


def _whole_number(value: Any, field: str, message: str) -> int:
    if isinstance(value, bool):
        raise _field_error(field, message)
    if isinstance(value, int):
        return value
    try:
        text = str(value).strip()
        return int(text)
    except (TypeError, ValueError):
        raise _field_error(field, message) from None


def _field_error(field: str, message: str) -> PortalError:
    return PortalError(message, fields={field: message})


# --- environments -----------------------------------------------------------------------------

@transaction.atomic
def environment_create(*, workspace: Workspace, name: str, user, kind: str = Environment.Kind.LOCAL,
                       engine_url: str = "", publish_address: str = "", labels: Any = None,
                       description: str = "") -> Environment:
    """Creates an environment (the lab's ``az ml env setup``). Only ``local`` ones for now. Choosing
    an engine URL or a publish address (a machine the portal will talk to) takes the owner role."""
    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    if str(engine_url or "").strip() or str(publish_address or "").strip() not in ("", "127.0.0.1"):
        require_role(user=user, workspace=workspace, role=Role.OWNER)
    name = check_name(name, what="environment name")
    kind = (kind or Environment.Kind.LOCAL).strip() if isinstance(kind, str) else kind
    if kind == Environment.Kind.CLUSTER:
        raise _field_error("kind", f"Environment {name!r}: {CLUSTER_NOT_AVAILABLE}; create a local one (a Docker engine) for now.")
    if kind not in Environment.Kind.values:
        raise _field_error("kind", f"Unknown kind {str(kind)[:20]!r}: use 'local'.")
    engine_url = check_engine_url(engine_url)
    publish_address = check_publish_address(publish_address)
    labels = check_labels(labels)
    description = (description or "").strip() if isinstance(description, str) else ""
    if len(description) > 2000:
        raise _field_error("description", "The description is over 2000 characters: shorten it.")
    if Environment.objects.filter(workspace=workspace, name=name).exists():
        raise _field_error("name", f"Workspace '{workspace.name}' has an environment named '{name}' already: choose another name.")
    try:
        with transaction.atomic():
            environment = Environment.objects.create(
                workspace=workspace, name=name, kind=kind, engine_url=engine_url, publish_address=publish_address,
                labels=labels, description=description, created_by=user,
            )
    except IntegrityError:
        raise _field_error("name", f"Workspace '{workspace.name}' has an environment named '{name}' already: choose another name.") from None
    activity_record(workspace=workspace, actor=user, verb="environment.created", target=environment,
                    detail={"kind": kind, "engine": environment.engine_label})
    return environment


def _services_listed(environment: Environment) -> str:
    """The names of the services in ``environment`` for a message (five at most, then "…"); "" for none."""
    names = list(environment.services.order_by("name").values_list("name", flat=True)[:6])
    return ", ".join(names[:5]) + (" …" if len(names) > 5 else "")


UPDATABLE_ENVIRONMENT_FIELDS = ("description", "labels", "engine_url", "publish_address")


def environment_update(*, environment: Environment, user, changes: dict[str, Any]) -> Environment:
    """Changes an environment's description, labels, engine URL or publish address (only the keys
    given). The engine and the publish address stay as they are while services run in it (those
    replicas live on that engine, at that address): refused, naming the services. Names and kinds
    do not change (scripts and services refer to environments by name)."""
    require_role(user=user, workspace=environment.workspace, role=Role.CONTRIBUTOR)
    unknown = sorted(set(changes) - set(UPDATABLE_ENVIRONMENT_FIELDS))
    if unknown:
        message = (f"Only {', '.join(UPDATABLE_ENVIRONMENT_FIELDS)} can change; not {', '.join(unknown)}"
                   + (" (to rename, set up a new environment and move the services)" if "name" in unknown else "") + ".")
        raise PortalError(message, fields={k: "Cannot change." for k in unknown})
    values: dict[str, Any] = {}
    if "description" in changes:
        description = changes["description"]
        if not isinstance(description, str) or len(description.strip()) > 2000:
            raise _field_error("description", "The description must be text of at most 2000 characters.")
        values["description"] = description.strip()
    if "labels" in changes:
        values["labels"] = check_labels(changes["labels"])
    if "engine_url" in changes or "publish_address" in changes:  # which machines the portal talks to
        require_role(user=user, workspace=environment.workspace, role=Role.OWNER)
    if "engine_url" in changes:
        values["engine_url"] = check_engine_url(changes["engine_url"])
    if "publish_address" in changes:
        values["publish_address"] = check_publish_address(changes["publish_address"])
    with transaction.atomic():
        environment = Environment.objects.select_for_update().get(pk=environment.pk)
        moved = [f for f in ("engine_url", "publish_address") if f in values and values[f] != getattr(environment, f)]
        if moved:
            listed = _services_listed(environment)
            if listed:
                what = " and ".join("engine" if f == "engine_url" else "publish address" for f in moved)
                raise Conflict(f"Environment '{environment.name}' runs service {listed}: its {what} cannot change "
                               "under them; delete those services first, or set up another environment.", code="in_use")
        changed = {k: v for k, v in values.items() if getattr(environment, k) != v}
        for key, value in changed.items():
            setattr(environment, key, value)
        if changed:
            environment.save(update_fields=list(changed))
            activity_record(workspace=environment.workspace, actor=user, verb="environment.updated", target=environment,
                            detail={"changed": sorted(changed)})
    return environment


@transaction.atomic
def environment_delete(*, environment: Environment, user) -> None:
    """Deletes an environment; refused while services are in it (naming them)."""
    require_role(user=user, workspace=environment.workspace, role=Role.OWNER)
    listed = _services_listed(environment)
    if listed:
        raise Conflict(f"Environment '{environment.name}' runs service {listed}: delete those services first.",
                       code="in_use")
    activity_record(workspace=environment.workspace, actor=user, verb="environment.deleted", target=environment)
    environment.delete()


def environment_activate(*, environment: Environment, user) -> ActiveEnvironment:
    """Makes ``environment`` the user's active one in its workspace (the lab's ``az ml env set``)."""
    require_role(user=user, workspace=environment.workspace, role=Role.READER)
    active, _ = ActiveEnvironment.objects.update_or_create(
        user=user, workspace=environment.workspace, defaults={"environment": environment},
    )
    return active


def environment_by_ref(*, workspace: Workspace, ref: Any) -> Environment:
    """The environment of ``workspace`` with this id or name; PortalError (field ``environment``)
    naming the workspace's environments when there is none."""
    ref = str(ref or "").strip()
    qs = Environment.objects.filter(workspace=workspace)
    try:
        found = qs.filter(pk=uuid.UUID(ref)).first()
    except ValueError:
        found = qs.filter(name=ref).first()
    if found is None:
        names = list(qs.order_by("name").values_list("name", flat=True)[:10])
        known = f"its environments are {', '.join(names)}" if names else "it has no environments yet"
        raise _field_error("environment", f"Unknown environment {ref[:80]!r} in workspace '{workspace.name}'; {known}.")
    return found


def environment_for_new_service(*, workspace: Workspace, user, ref: Any = None) -> tuple[Environment, str | None]:
    """Returns (the environment a new service goes to, a notice for the user or None).

    Without ``ref``: the user's active environment, else the workspace's ``local`` one, else its only
    one. A workspace with no environment at all gets a ``local`` one (this machine's engine), made
    the user's active one, so the lab's one-shot ``service create realtime`` works out of the box."""
    if ref not in (None, ""):
        environment = environment_by_ref(workspace=workspace, ref=ref)
        _check_deployable(environment)
        return environment, None
    active = ActiveEnvironment.objects.filter(user=user, workspace=workspace).select_related("environment").first()
    if active is not None:
        _check_deployable(active.environment)
        return active.environment, None
    environments = list(Environment.objects.filter(workspace=workspace).order_by("name")[:20])
    chosen = next((e for e in environments if e.name == "local"), None)
    if chosen is None and len(environments) == 1:
        chosen = environments[0]
    if chosen is not None:
        _check_deployable(chosen)
        return chosen, None
    if environments:
        names = ", ".join(e.name for e in environments[:10])
        raise _field_error("environment", f"Choose an environment ({names}) or set your active one first "
                                          "(POST /api/v1/environments/<name>/activate/).")
    # First services racing each other: they queue on the workspace's row and the later ones find
    # the 'local' environment the first one made (instead of failing on its unique name).
    list(Workspace.objects.select_for_update(no_key=True).filter(pk=workspace.pk).values_list("pk", flat=True))
    made = Environment.objects.filter(workspace=workspace, name="local").first()
    if made is not None:
        _check_deployable(made)
        return made, None
    environment = environment_create(workspace=workspace, name="local", user=user,
                                     description="Made automatically for the first service: the workers' own Docker engine.")
    environment_activate(environment=environment, user=user)
    return environment, ("No environment was set up in this workspace: created environment 'local' (the workers' own "
                         "Docker engine) and made it your active one.")


def _check_deployable(environment: Environment) -> None:
    if environment.kind != Environment.Kind.LOCAL:
        raise _field_error("environment", f"Environment '{environment.name}': {CLUSTER_NOT_AVAILABLE}.")


# --- creating services ------------------------------------------------------------------------

def new_key() -> str:
    return secrets.token_urlsafe(32)


def _check_name_free(workspace: Workspace, name: str) -> None:
    if Service.objects.filter(workspace=workspace, name=name).exists():
        raise _field_error("name", f"Workspace '{workspace.name}' has a service named '{name}' already: choose another "
                                   "name, or update that service to the new image.")


def check_image_deployable(image, *, field: str = "image") -> None:
    """Raises PortalError unless ``image`` built successfully."""
    from registry.models import Image

    if image.status == Image.Status.SUCCEEDED:
        return
    if image.status == Image.Status.FAILED:
        message = f"Image {image.ref} failed to build ({(image.error or 'see its build log')[:200]}): fix the manifest and build a new image."
    else:
        message = f"Image {image.ref} is not built yet (it is {image.status}): wait until its build succeeded."
    raise _field_error(field, message)


def _create_row(*, workspace: Workspace, name: str, environment: Environment, image, user, replicas: int,
                cpus: float, memory_mb: int) -> Service:
    try:
        with transaction.atomic():
            service = Service.objects.create(
                workspace=workspace, name=name, environment=environment, image=image, replicas=replicas, cpus=cpus,
                memory_mb=memory_mb, primary_key=new_key(), secondary_key=new_key(), proxy_key=new_key(),
                created_by=user,
            )
    except IntegrityError:
        raise _field_error("name", f"Workspace '{workspace.name}' has a service named '{name}' already: choose another name.") from None
    return service


def _enqueue(task, service_id) -> None:
    sid = str(service_id)
    transaction.on_commit(lambda: task.delay(sid))


def service_create(*, workspace: Workspace, name: str, image, user, environment: Any = None, replicas: Any = 1,
                   cpus: Any = 1.0, memory_mb: Any = 1024) -> tuple[Service, str | None]:
    """Creates a service from a built image, status ``creating``; the deploy task starts its
    replicas once the transaction commits. Returns (service, notice or None). Nothing is started
    when any check fails."""
    from deployments.tasks import deploy_service

    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    name = check_name(name, what="service name")
    replicas, cpus, memory_mb = check_replicas(replicas), check_cpus(cpus), check_memory(memory_mb)
    if image.workspace_id != workspace.pk:
        raise _field_error("image", f"Image {image.ref} is not in workspace '{workspace.name}'.")
    check_image_deployable(image)
    with transaction.atomic():
        _check_name_free(workspace, name)
        env, notice = environment_for_new_service(workspace=workspace, user=user, ref=environment)
        service = _create_row(workspace=workspace, name=name, environment=env, image=image, user=user,
                              replicas=replicas, cpus=cpus, memory_mb=memory_mb)
        activity_record(workspace=workspace, actor=user, verb="service.created", target=service,
                        detail={"image": image.ref, "environment": env.name, "replicas": replicas})
        event(service.pk, f"Created from image {image.ref} in environment '{env.name}' with {replicas} replica(s).")
        _enqueue(deploy_service, service.pk)
    return service, notice


def manifest_name_for(service_name: str) -> str:
    """A manifest/image name for a service name (Docker allows single separators only)."""
    return re.sub(r"[-_.]{2,}", "-", service_name).strip("-_.") or "service"


def service_create_realtime(*, workspace: Workspace, name: str, model_file: IO[bytes], model_filename: str,
                            score: bytes, schema: bytes, requirements: bytes | None, user,
                            runtime: str = "python", model_name: str | None = None, environment: Any = None,
                            replicas: Any = 1, cpus: Any = 1.0, memory_mb: Any = 1024,
                            confirm_unknown: bool = False) -> tuple[Service, str | None]:
    """The lab's ``az ml service create realtime``: registers the model (next version when the name
    exists), creates the manifest and the image (its build queued), and records the service in
    ``creating``; its deploy waits for the build. One transaction: any check that fails (of any
    step) leaves nothing stored, files included; the model's scan gates it as it gates a manifest.
    Returns (service, notice or None)."""
    from deployments.tasks import deploy_service
    from registry import services as registry

    require_role(user=user, workspace=workspace, role=Role.CONTRIBUTOR)
    name = check_name(name, what="service name")
    replicas, cpus, memory_mb = check_replicas(replicas), check_cpus(cpus), check_memory(memory_mb)
    # The registry checks these again in its steps; checking first refuses a bad upload before the
    # transaction (and its write lock) starts and before the model file is copied into storage.
    with _step_fields({"name": "model_name", "file": "model_file"}):
        registry.check_model_name(model_filename or "", field="file", what="file name")
        registry.check_model_name(model_name or model_filename or "")
    with _step_fields({"score": "score_file", "schema": "schema_file", "requirements": "requirements_file"}):
        registry.check_score(score, run_function=registry.check_schema(schema).run_function)
        registry.parse_requirements(requirements)
    stored: list[str] = []
    try:
        with transaction.atomic():
            _check_name_free(workspace, name)
            env, notice = environment_for_new_service(workspace=workspace, user=user, ref=environment)
            with _step_fields({"name": "model_name", "file": "model_file"}):
                model = registry.model_register_upload(workspace=workspace, name=model_name or model_filename,
                                                       fileobj=model_file, filename=model_filename, user=user)
            stored.append(model.file)
            with _step_fields({"score": "score_file", "schema": "schema_file", "requirements": "requirements_file",
                               "models": "model_file"}):
                manifest = registry.manifest_create(workspace=workspace, name=manifest_name_for(name), models=[model],
                                                    score=score, schema=schema, requirements=requirements, user=user,
                                                    runtime=runtime, confirm_unknown=confirm_unknown, one_shot=True)
            stored += [info["storage"] for info in manifest.files.values()]
            image = registry.image_create(manifest=manifest, user=user)
            service = _create_row(workspace=workspace, name=name, environment=env, image=image, user=user,
                                  replicas=replicas, cpus=cpus, memory_mb=memory_mb)
            activity_record(workspace=workspace, actor=user, verb="service.created", target=service,
                            detail={"image": image.ref, "environment": env.name, "replicas": replicas,
                                    "model": model.ref, "manifest": manifest.ref})
            event(service.pk, f"Registered {model.ref}, created manifest {manifest.ref} and queued image {image.ref}; "
                              f"the service starts in '{env.name}' once the image is built.")
            _enqueue(deploy_service, service.pk)
    except BaseException:
        _delete_stored(stored)
        raise
    return service, notice


def _delete_stored(names: list[str]) -> None:
    """Removes files a rolled-back one-shot create had stored."""
    from django.core.files.storage import default_storage

    for stored in names:
        try:
            default_storage.delete(stored)
        except OSError:
            logger.exception("could not delete stored file %s", stored)


@contextmanager
def _step_fields(renames: dict[str, str]):
    """Re-raises a registry step's PortalError with its fields named as the one-shot's form names them."""
    try:
        yield
    except PortalError as exc:
        exc.fields = {renames.get(k, k): v for k, v in exc.fields.items()}
        raise


# --- changing services ------------------------------------------------------------------------

def _start_change(service: Service, *, user, op: dict, verb: str, detail: dict, fields: dict | None = None) -> Service:
    """Moves a healthy or unhealthy service to ``updating`` with ``op`` pending and enqueues the
    worker; Conflict while it is doing something else."""
    from deployments.tasks import update_service

    rollout = Service.objects.filter(pk=service.pk).values_list("rollout", flat=True).first()
    if rollout:  # its replicas are the canary's or shadow's too: finish that first
        raise Conflict(f"Service '{service.name}' has a {rollout.get('mode')} of image {rollout.get('image_ref')} in progress: "
                       "promote or abort it first.", code="rollout_in_progress")
    with transaction.atomic():
        moved = 0
        for status in (Service.Status.HEALTHY, Service.Status.UNHEALTHY):
            moved = Service.objects.filter(pk=service.pk, status=status).update(
                status=Service.Status.UPDATING, pending={**op, "from": status, "by": getattr(user, "pk", None)},
                **(fields or {}),
            )
            if moved:
                break
        if not moved:
            current = Service.objects.filter(pk=service.pk).values_list("status", flat=True).first()
            raise Conflict(f"Service '{service.name}' is {current}: wait until it is healthy, then try again.",
                           code="busy")
        activity_record(workspace=service.workspace, actor=user, verb=verb, target=service, detail=detail)
        _enqueue(update_service, service.pk)
    service.refresh_from_db()
    return service


def _image_in_workspace(service: Service, ref: Any, *, field: str = "image"):
    from registry import selectors as registry_selectors
    from registry.models import Image

    if hasattr(ref, "pk") and hasattr(ref, "tag"):
        image = ref if ref.workspace_id == service.workspace_id else None
    else:
        image = registry_selectors.find_by_ref(Image.objects.filter(workspace_id=service.workspace_id), str(ref or ""), tag=True)
    if image is None:
        raise _field_error(field, f"Unknown image {str(ref)[:80]!r} in workspace '{service.workspace.name}'.")
    return image


def service_update(*, service: Service, image: Any, user) -> Service:
    """Starts an update to another built image: new replicas start, and only once all are ready
    does traffic switch and the old ones stop. A new image that never gets ready leaves the old one
    serving, with the reason in ``last_update_error``."""
    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    image = _image_in_workspace(service, image)
    check_image_deployable(image)
    if image.pk == service.image_id:
        raise _field_error("image", f"Service '{service.name}' runs image {image.ref} already: choose another image.")
    return _start_change(service, user=user, op={"op": "update", "image": str(image.pk)}, verb="service.updating",
                         detail={"from": service.image.ref, "to": image.ref})


def service_rollback(*, service: Service, user, revision: Any = None, image: Any = None) -> Service:
    """Goes back to the image of an earlier revision (``revision`` number, or ``image`` ref that
    the service served before) the way an update does."""
    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    revisions = service.revisions.select_related("image")
    if revision not in (None, ""):
        number = _whole_number(revision, "revision", "revision must be a revision number, like 1.")
        found = revisions.filter(number=number).first()
        if found is None:
            numbers = ", ".join(str(n) for n in revisions.values_list("number", flat=True)[:20]) or "none"
            raise _field_error("revision", f"Service '{service.name}' has no revision {number}; its revisions are {numbers}.")
        target = found.image
        if target is None:
            raise _field_error("revision", f"Revision {number} served image {found.image_ref}, which was deleted since.")
    elif image not in (None, ""):
        target = _image_in_workspace(service, image)
        if not revisions.filter(image=target).exists():
            raise _field_error("image", f"Service '{service.name}' never served image {target.ref}: roll back to an image "
                                        "from its history, or update to it.")
    else:
        raise PortalError("Say what to roll back to: {\"revision\": n} or {\"image\": ref}.",
                          fields={"revision": "Give a revision number or an image."})
    if target.pk == service.image_id:
        raise _field_error("revision", f"Service '{service.name}' serves image {target.ref} already.")
    check_image_deployable(target, field="revision")
    return _start_change(service, user=user, op={"op": "rollback", "image": str(target.pk)}, verb="service.rolling_back",
                         detail={"from": service.image.ref, "to": target.ref})


def service_scale(*, service: Service, replicas: Any, user) -> Service:
    """Scales to ``replicas`` (1 … MLPORTAL_MAX_REPLICAS); the current count is a no-op."""
    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    replicas = check_replicas(replicas)
    if replicas == service.replicas and service.status in (Service.Status.HEALTHY, Service.Status.UNHEALTHY):
        return service
    return _start_change(service, user=user, op={"op": "scale", "replicas": replicas}, verb="service.scaling",
                         detail={"from": service.replicas, "to": replicas})


def service_regenerate_key(*, service: Service, which: Any, user) -> Service:
    """Replaces the primary or the secondary key. The portal's proxy takes the new key at once (and
    the old one no longer); the containers are restarted with it one set at a time (no downtime)."""
    require_role(user=user, workspace=service.workspace, role=Role.CONTRIBUTOR)
    if which not in ("primary", "secondary"):
        raise _field_error("key", f"Say which key to regenerate: 'primary' or 'secondary' (not {str(which)[:20]!r}).")
    return _start_change(service, user=user, op={"op": "keys", "key": which}, verb="service.key_regenerated",
                         detail={"key": which}, fields={f"{which}_key": new_key()})


def service_delete(*, service: Service, user) -> Service:
    """Marks the service ``deleting``; the worker removes its containers, then the row."""
    from deployments.tasks import delete_service

    require_role(user=user, workspace=service.workspace, role=Role.OWNER)
    with transaction.atomic():
        moved = Service.objects.filter(pk=service.pk).exclude(
            status__in=[Service.Status.DELETING, Service.Status.DELETED]).update(status=Service.Status.DELETING)
        if moved:
            activity_record(workspace=service.workspace, actor=user, verb="service.deleting", target=service)
            event(service.pk, "Deletion requested: removing its containers.")
            _enqueue(delete_service, service.pk)
    service.refresh_from_db()
    return service


def event(service_id, message: str, level: str = ServiceEvent.Level.INFO) -> None:
    ServiceEvent.objects.create(service_id=service_id, level=level, message=message[:4000])


# --- the worker's side: containers --------------------------------------------------------------

def _lock(service_id) -> str | None:
    """Takes the service's lease; returns its token, or None when another worker holds it."""
    now = timezone.now()
    token = uuid.uuid4()
    taken = Service.objects.filter(pk=service_id).filter(Q(lock_token__isnull=True) | Q(lock_until__lt=now)).update(
        lock_token=token, lock_until=now + timedelta(seconds=LEASE_SECONDS))
    return str(token) if taken else None


def _unlock(service_id, token: str) -> None:
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
        **_scoring_limits_env(),
        **_capture_env(service),
    }


def _scoring_limits_env() -> dict[str, str]:
    """The limits every scoring container enforces, from the portal's settings."""
    return {
        # The proxy and the container refuse the same bodies.
        "MLPORTAL_MAX_BODY_BYTES": str(settings.MLPORTAL_MAX_BODY_BYTES),
        "MLPORTAL_REQUEST_TIMEOUT": f"{settings.MLPORTAL_SCORING_TIMEOUT_SECONDS:g}",
        "MLPORTAL_MAX_JSON_DEPTH": str(settings.MLPORTAL_MAX_JSON_DEPTH),  # the portal refuses the same nesting
    }


def _capture_env(service: Service) -> dict[str, str]:
    from monitoring.services import container_env

    return container_env(service)


def _start_replicas(service: Service, *, image, numbers: list[int]) -> list[dict]:
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
        _stop_all([item["id"] for item in started], base_url)
        raise
    return started


def _stop_all(container_ids: list[str], base_url: str | None) -> list[str]:
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


def _replica_rows(service: Service, started: list[dict]) -> list[ServiceReplica]:
    return [ServiceReplica(service=service, number=item["number"], container_id=item["id"], host=item["host"],
                           port=item["port"]) for item in started]


def _start_error(exc: BaseException) -> str:
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


def _log_tail_event(service_id, exc: BaseException) -> None:
    tail = getattr(exc, "log_tail", "")
    if tail:
        event(service_id, f"Last lines of the container's log:\n{tail[-3000:]}", ServiceEvent.Level.ERROR)


def _deploy_errors() -> tuple[type[BaseException], ...]:
    from celery.exceptions import SoftTimeLimitExceeded
    from compute.engine import EngineError

    return (EngineError, ValueError, SoftTimeLimitExceeded)


def service_deploy(*, service_id: str) -> str | None:
    """Starts a ``creating`` service's replicas once its image is built: creating → healthy, or
    failed with the reason (the image's build error, the engine's error, the container's last log
    line). Returns the new status, WAIT while the image builds (or another worker holds the
    service), None when there is nothing to do."""
    from registry.models import Image

    service = Service.objects.select_related("image", "environment", "workspace").filter(pk=service_id).first()
    if service is None or service.status != Service.Status.CREATING:
        return None
    image = service.image
    if image.status in (Image.Status.QUEUED, Image.Status.BUILDING):
        limit = settings.MLPORTAL_BUILD_TIMEOUT + IMAGE_WAIT_GRACE
        if (timezone.now() - service.created_at).total_seconds() > limit:
            return _fail(service, f"image {image.ref} did not finish building within {limit} s")
        # Touching updated_at shows the reconciler this deploy is alive.
        Service.objects.filter(pk=service.pk, status=Service.Status.CREATING).update(updated_at=timezone.now())
        return WAIT
    if image.status == Image.Status.FAILED:
        return _fail(service, f"image {image.ref} failed to build: {image.error or 'see its build log'}")
    token = _lock(service.pk)
    if token is None:
        return WAIT
    try:
        service.refresh_from_db()
        if service.status != Service.Status.CREATING:
            return None
        try:
            started = _start_replicas(service, image=image, numbers=list(range(1, service.replicas + 1)))
        except _deploy_errors() as exc:
            _log_tail_event(service.pk, exc)
            return _fail(service, f"could not start it in environment '{service.environment.name}': {_start_error(exc)}")
        with transaction.atomic():
            moved = Service.objects.filter(pk=service.pk, status=Service.Status.CREATING).update(
                status=Service.Status.HEALTHY, error="")
            if not moved:  # deleted meanwhile: the delete task (waiting for the lease) removes these
                ServiceReplica.objects.bulk_create(_replica_rows(service, started))
                return None
            ServiceReplica.objects.bulk_create(_replica_rows(service, started))
            ServiceRevision.objects.create(service=service, number=1, image=image, image_ref=image.ref,
                                           reason=ServiceRevision.Reason.CREATE, created_by_id=service.created_by_id)
            event(service.pk, f"Deployed image {image.ref}: {len(started)} replica(s) ready.")
        return Service.Status.HEALTHY
    finally:
        _unlock(service.pk, token)


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
    token = _lock(service.pk)
    if token is None:
        return WAIT
    try:
        service = Service.objects.select_related("image", "environment", "workspace").get(pk=service.pk)
        if service.status != Service.Status.UPDATING:
            return None
        op = service.pending or {}
        if op.get("op") == "scale":
            return _scale(service, op)
        return _roll(service, op)
    finally:
        _unlock(service.pk, token)


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
    try:
        started = _start_replicas(service, image=image, numbers=numbers)
    except _deploy_errors() as exc:
        _log_tail_event(service.pk, exc)
        message = f"{what[0].upper()}{what[1:]} failed: {_start_error(exc)}. It goes on serving image {service.image.ref}."
        if op.get("op") == "keys":
            message += " The portal accepts the new key already; the containers' own endpoints still take the old one."
        if _finish_change(service, error=message):
            event(service.pk, message, ServiceEvent.Level.ERROR)
        return Service.Status.HEALTHY
    base_url = service.environment.docker_url
    with transaction.atomic():
        # Traffic switches here: the proxy reads these rows. The status stays updating until the
        # old replicas are gone, so "healthy" means the change is over.
        switched = Service.objects.filter(pk=service.pk, status=Service.Status.UPDATING).update(image=image)
        if switched:
            ServiceReplica.objects.filter(service=service).delete()
            ServiceReplica.objects.bulk_create(_replica_rows(service, started))
            if image.pk != service.image_id:
                now = timezone.now()
                ServiceRevision.objects.filter(service=service, ended_at__isnull=True).update(ended_at=now)
                number = (service.revisions.aggregate(n=Max("number"))["n"] or 0) + 1
                ServiceRevision.objects.create(service=service, number=number, image=image, image_ref=image.ref,
                                               reason=ServiceRevision.Reason(op.get("op", "update")),
                                               created_by_id=op.get("by"))
                event(service.pk, f"{'Rolled back' if op.get('op') == 'rollback' else 'Updated'} from image "
                                  f"{service.image.ref} to {image.ref} (revision {number}); {len(started)} replica(s) ready.")
            else:
                event(service.pk, f"Keys changed: {len(started)} replica(s) restarted with the new {op.get('key', '')} key.")
    if not switched:  # deleted while the new replicas started: they are nobody's, remove them
        _stop_all([item["id"] for item in started], base_url)
        return None
    problems = _stop_all([r.container_id for r in old], base_url)
    if problems:
        event(service.pk, f"Could not remove old containers ({'; '.join(problems)}); the reconciler retries.",
              ServiceEvent.Level.WARNING)
    _finish_change(service)
    return Service.Status.HEALTHY


def _scale(service: Service, op: dict) -> str | None:
    target = int(op.get("replicas") or service.replicas)
    current = list(service.replica_set.all())
    base_url = service.environment.docker_url
    if target > len(current):
        taken = {r.number for r in current}
        numbers = [n for n in range(1, target + len(taken) + 1) if n not in taken][: target - len(current)]
        try:
            started = _start_replicas(service, image=service.image, numbers=numbers)
        except _deploy_errors() as exc:
            _log_tail_event(service.pk, exc)
            message = (f"Scaling from {len(current)} to {target} replicas failed: {_start_error(exc)}. "
                       f"It goes on with {len(current)}.")
            if _finish_change(service, error=message):
                event(service.pk, message, ServiceEvent.Level.ERROR)
            return Service.Status.HEALTHY
        with transaction.atomic():
            if not _finish_change(service, replicas=target):
                ServiceReplica.objects.bulk_create(_replica_rows(service, started))  # for the delete task
                return None
            ServiceReplica.objects.bulk_create(_replica_rows(service, started))
            event(service.pk, f"Scaled from {len(current)} to {target} replicas.")
        return Service.Status.HEALTHY
    going = sorted(current, key=lambda r: r.number, reverse=True)[: len(current) - target]
    with transaction.atomic():
        if not Service.objects.filter(pk=service.pk, status=Service.Status.UPDATING).update(replicas=target):
            return None
        # The rows go first, so the proxy stops sending to these replicas before they stop.
        ServiceReplica.objects.filter(pk__in=[r.pk for r in going]).delete()
        event(service.pk, f"Scaled from {len(current)} to {target} replicas.")
    problems = _stop_all([r.container_id for r in going], base_url)
    if problems:
        event(service.pk, f"Could not remove containers ({'; '.join(problems)}); the reconciler retries.",
              ServiceEvent.Level.WARNING)
    _finish_change(service)
    return Service.Status.HEALTHY


def service_remove(*, service_id: str) -> str | None:
    """Removes a ``deleting`` service's containers, then its row (deleting → deleted → gone).
    Returns "deleted", WAIT (another worker holds it), "retry" (the engine could not remove
    them: the error is kept on the service), or None."""
    from compute.engine import LABEL_ID, EngineError, EngineUnreachable
    from compute.runner import list_containers

    service = Service.objects.select_related("environment", "workspace").filter(pk=service_id).first()
    if service is None or service.status != Service.Status.DELETING:
        return None
    token = _lock(service.pk)
    if token is None:
        return WAIT
    try:
        base_url = service.environment.docker_url
        ids = set(service.replica_set.values_list("container_id", flat=True))
        try:
            try:
                ids |= {c["id"] for c in list_containers("service", base_url=base_url)
                        if c["labels"].get(LABEL_ID) == str(service.pk)}
            except EngineUnreachable:
                if ids:
                    raise
                # It never ran a replica (say, its engine was never reachable): nothing to remove.
            problems = _stop_all(sorted(ids), base_url)
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
            Service.objects.filter(pk=service.pk).delete()
        return Service.Status.DELETED
    finally:
        _unlock(service.pk, token)


# --- reconcile ---------------------------------------------------------------------------------

def services_reconcile() -> dict:
    """Compares services with their engines: restarts replicas whose container died (same image and
    keys; an event says so), removes this portal's service containers that no live replica owns,
    marks services unhealthy while their engine does not answer, and re-enqueues work whose task
    was lost. Returns a summary."""
    from compute.engine import LABEL_ID, EngineError, engine_status
    from compute.runner import list_containers, remove_container

    summary: dict[str, Any] = {"requeued": 0, "restarted": 0, "removed": 0, "unreachable": []}
    summary["requeued"] = _requeue_lost_work()
    instance = portal_instance()
    by_engine: dict[str | None, list[Environment]] = defaultdict(list)
    for environment in Environment.objects.filter(kind=Environment.Kind.LOCAL):
        by_engine[environment.docker_url].append(environment)
    for base_url, environments in by_engine.items():
        status = engine_status(base_url)
        if not status["ok"]:
            summary["unreachable"].append(base_url or "local")
            _mark_engine_down(environments, status["error"])
            continue
        try:
            # Containers first, services second: a container only exists once its service's row does.
            containers = [c for c in list_containers("service", base_url=base_url) if c["labels"].get(LABEL_PORTAL) == instance]
        except EngineError as exc:
            summary["unreachable"].append(base_url or "local")
            _mark_engine_down(environments, str(exc))
            continue
        live = {str(s.pk): s for s in Service.objects.filter(environment__in=environments)
                .exclude(status=Service.Status.DELETED).select_related("image", "environment", "workspace")}
        owned: dict[str, list[dict]] = defaultdict(list)
        for container in containers:
            service_id = container["labels"].get(LABEL_ID, "")
            if service_id in live:
                owned[service_id].append(container)
                continue
            try:
                remove_container(container["id"], base_url=base_url)
                summary["removed"] += 1
            except EngineError as exc:
                logger.warning("could not remove orphan container %s: %s", container["id"], exc)
        for service_id, service in live.items():
            if service.status in (Service.Status.HEALTHY, Service.Status.UNHEALTHY, Service.Status.FAILED):
                restarted, removed = _reconcile_service(service, owned.get(service_id, []))
                summary["restarted"] += restarted
                summary["removed"] += removed
    return summary


def _requeue_lost_work() -> int:
    """Re-enqueues the task of services stuck in a transition whose task was lost (a worker
    restart): nothing holds their lease and nothing touched them for STALE_SECONDS."""
    from deployments.tasks import delete_service, deploy_service, update_service

    now = timezone.now()
    tasks = {Service.Status.CREATING: deploy_service, Service.Status.UPDATING: update_service,
             Service.Status.DELETING: delete_service}
    stuck = Service.objects.filter(status__in=list(tasks), updated_at__lt=now - timedelta(seconds=STALE_SECONDS)).filter(
        Q(lock_token__isnull=True) | Q(lock_until__lt=now))
    count = 0
    for service_id, status in stuck.values_list("pk", "status"):
        Service.objects.filter(pk=service_id).update(updated_at=now)
        tasks[status].delay(str(service_id))
        count += 1
    return count


def _mark_engine_down(environments: list[Environment], error: str | None) -> None:
    for service in Service.objects.filter(environment__in=environments, status=Service.Status.HEALTHY):
        if Service.objects.filter(pk=service.pk, status=Service.Status.HEALTHY).update(status=Service.Status.UNHEALTHY):
            event(service.pk, f"The Docker engine of environment '{service.environment.name}' does not answer: {error}",
                  ServiceEvent.Level.ERROR)


def _describe_gone(container: dict | None, state: dict | None) -> str:
    if container is None or state is None:
        return "was removed"
    if state.get("oom"):
        return "ran out of memory"
    if state.get("exit_code") is not None:
        return f"exited with code {state['exit_code']}"
    return f"is {state.get('status') or container.get('status') or 'not running'}"


def _reconcile_service(service: Service, containers: list[dict]) -> tuple[int, int]:
    """Repairs one service under its lease: stray containers removed, dead replicas replaced.
    Returns (replicas restarted, containers removed)."""
    from compute.containers import container_state
    from compute.engine import EngineError
    from compute.runner import remove_container

    token = _lock(service.pk)
    if token is None:
        return 0, 0
    restarted = removed = 0
    base_url = service.environment.docker_url
    try:
        service.refresh_from_db()
        if service.status not in (Service.Status.HEALTHY, Service.Status.UNHEALTHY, Service.Status.FAILED):
            return 0, 0
        replicas = list(service.replica_set.select_related("revision__image"))
        known = {r.container_id for r in replicas}
        by_id = {c["id"]: c for c in containers}
        for container in containers:
            if container["id"] not in known:  # left by an interrupted update or scale
                try:
                    remove_container(container["id"], base_url=base_url)
                    removed += 1
                except EngineError as exc:
                    logger.warning("could not remove stray container %s: %s", container["id"], exc)
        if service.status == Service.Status.FAILED:
            return restarted, removed
        problems = []
        wanted = set(range(1, service.replicas + 1))
        missing_numbers = sorted(wanted - {r.number for r in replicas})
        for replica in replicas:
            container = by_id.get(replica.container_id)
            if container is not None and container["running"]:
                continue
            try:
                state = container_state(replica.container_id, base_url=base_url) if container else None
                # A canary's or shadow's replica comes back with its own revision's image.
                image = replica.revision.image if replica.revision_id and replica.revision.image_id else service.image
                started = _start_replicas(service, image=image, numbers=[replica.number])[0]
            except _deploy_errors() as exc:
                _log_tail_event(service.pk, exc)
                problems.append(f"replica {replica.number}: {_start_error(exc)}")
                continue
            ServiceReplica.objects.filter(pk=replica.pk).update(
                container_id=started["id"], host=started["host"], port=started["port"], restarts=replica.restarts + 1,
                started_at=timezone.now())
            if container is not None:
                _stop_all([replica.container_id], base_url)
            restarted += 1
            event(service.pk, f"Replica {replica.number}'s container {replica.container_id[:12]} {_describe_gone(container, state)}; "
                              f"started a new one ({started['id'][:12]}) with the same image and keys.",
                  ServiceEvent.Level.WARNING)
        for number in missing_numbers:
            try:
                started = _start_replicas(service, image=service.image, numbers=[number])
            except _deploy_errors() as exc:
                problems.append(f"replica {number}: {_start_error(exc)}")
                continue
            ServiceReplica.objects.bulk_create(_replica_rows(service, started))
            restarted += 1
            event(service.pk, f"Replica {number} was missing; started it ({started[0]['id'][:12]}).", ServiceEvent.Level.WARNING)
        _settle_health(service, problems)
    finally:
        _unlock(service.pk, token)
    return restarted, removed


def _settle_health(service: Service, problems: list[str]) -> None:
    if problems:
        if Service.objects.filter(pk=service.pk, status=Service.Status.HEALTHY).update(status=Service.Status.UNHEALTHY):
            event(service.pk, f"Unhealthy: could not restart {'; '.join(problems)}", ServiceEvent.Level.ERROR)
    elif Service.objects.filter(pk=service.pk, status=Service.Status.UNHEALTHY).update(status=Service.Status.HEALTHY):
        event(service.pk, "Healthy again: every replica answers.")
